"""Request and model metrics, kept in plain dictionaries and exposed in Prometheus's format.

Every update happens on the event loop's thread, so the series need no locks: a counter is a
float in a dict, a histogram a list of bucket counts found with `bisect` (C). Measured against
prometheus_client's own instruments (a lock and a Python bucket loop per observation), this
took the per-request cost of metrics from ~35 us to ~10 us on the 2-core machine. The
registry's collector turns the series into metric families at scrape time; gauges (queue
depth, model state, memory, breakers) are read from the store and the router then
(`gateway/metrics.py`). Counter names get `_total` from the exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from konsilium.observability.events import UnloadReason

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Key = tuple[str, ...]


class CounterSeries:
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.values: dict[Key, float] = {}

    def inc(self, key: Key, amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        return family


class HistogramSeries:
    def __init__(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.bounds = list(buckets)
        self.counts: dict[Key, list[int]] = {}  # per bucket, not cumulative; the last is +Inf
        self.sums: dict[Key, float] = {}

    def observe(self, key: Key, value: float) -> None:
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.bounds) + 1)
            self.sums[key] = 0.0
        counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: Prometheus's `le`
        self.sums[key] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, counts in self.counts.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric(list(key), buckets, self.sums[key])
        return family


class Metrics(Collector):
    """The instruments, the `Observer` the store and the router report to, and the gateway's
    per-request hooks; one registry per application (tests build several in one process)."""

    def __init__(self) -> None:
        self.requests = CounterSeries(
            "konsilium_requests", "Inference requests answered, by the model that answered (or the one asked for)",
            ["model", "role", "status", "stream"],
        )  # fmt: skip
        self.request_duration = HistogramSeries(
            "konsilium_request_duration_seconds", "Whole inference requests, to the last byte", ["model", "stream"],
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.ttft = HistogramSeries(
            "konsilium_time_to_first_token_seconds", "From the request's arrival to its first token", ["model"],
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.tpot = HistogramSeries(
            "konsilium_time_per_output_token_seconds", "Between output tokens, after the first", ["model"],
            TOKEN_BUCKETS,
        )  # fmt: skip
        self.tokens = CounterSeries("konsilium_tokens", "Tokens in and out", ["model", "direction"])
        self.queue_wait = HistogramSeries(
            "konsilium_queue_wait_seconds", "Waiting for a model's slot", ["model"], LATENCY_BUCKETS
        )
        self.loads = CounterSeries("konsilium_model_loads", "Model loads, by outcome", ["model", "outcome"])
        self.load_duration = HistogramSeries(
            "konsilium_model_load_duration_seconds", "Successful model loads", ["model"], LOAD_BUCKETS
        )
        self.unloads = CounterSeries(
            "konsilium_model_unloads", "Model unloads; reason evicted counts evictions", ["model", "reason"]
        )
        self.fallbacks = CounterSeries(
            "konsilium_fallbacks", "Targets that failed before answering, so the next one was tried",
            ["target", "error"],
        )  # fmt: skip
        self.decisions = CounterSeries(
            "konsilium_routing_decisions", "Routing decisions by role, how it was found and the prompt's language",
            ["role", "source", "language"],
        )  # fmt: skip
        self.councils = CounterSeries("konsilium_council_requests", "Council requests, by council", ["council"])
        self.council_calls = CounterSeries(
            "konsilium_council_calls", "A council's calls (agent, ranking, verdict) by role and outcome",
            ["council", "kind", "role", "status"],
        )  # fmt: skip
        self.verdict_duration = HistogramSeries(
            "konsilium_council_verdict_seconds", "The Director's verdict, from its dispatch to its last token",
            ["council"], LATENCY_BUCKETS,
        )  # fmt: skip
        self.redactions = CounterSeries(
            "konsilium_privacy_redactions", "Values replaced by placeholders before a cloud target, by type", ["type"]
        )
        self.key_requests = CounterSeries(
            "konsilium_key_requests", "Requests per API key (its name, never the secret), by status",
            ["key", "tenant", "status"],
        )  # fmt: skip
        self.key_tokens = CounterSeries("konsilium_key_tokens", "Tokens per API key", ["key", "tenant", "direction"])
        self.rate_limited = CounterSeries(
            "konsilium_rate_limited", "Requests refused by a key's limit (requests, tokens, parallel)", ["key", "limit"]
        )
        self.limiter_decisions = CounterSeries(
            "konsilium_limiter_decisions", "Limit checks by where they were decided: redis (shared) or local",
            ["where"],
        )  # fmt: skip
        self.redis_failures = CounterSeries(
            "konsilium_limiter_redis_failures", "Redis calls of the limiter that failed or timed out", ["operation"]
        )
        self.model_updates = CounterSeries(
            "konsilium_model_updates", "Staged update steps (stage, promote, rollback), by outcome",
            ["model", "step", "outcome"],
        )  # fmt: skip
        self.config_reloads = CounterSeries("konsilium_config_reloads", "Config reloads, by outcome", ["outcome"])
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for series in (
            self.requests, self.request_duration, self.ttft, self.tpot, self.tokens, self.queue_wait, self.loads,
            self.load_duration, self.unloads, self.fallbacks, self.decisions, self.councils, self.council_calls,
            self.verdict_duration, self.redactions, self.key_requests, self.key_tokens, self.rate_limited,
            self.limiter_decisions, self.redis_failures, self.model_updates, self.config_reloads,
        ):  # fmt: skip
            yield series.family()

    # ---- keys and limits (gateway/auth.py; konsilium/tenancy's LimiterObserver) ---------------
    def key_used(self, key: str, tenant: str, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.key_requests.inc((key, tenant, str(status)))
        if prompt_tokens:
            self.key_tokens.inc((key, tenant, "input"), prompt_tokens)
        if completion_tokens:
            self.key_tokens.inc((key, tenant, "output"), completion_tokens)

    def limit_decided(self, where: str) -> None:
        self.limiter_decisions.inc((where,))

    def redis_failed(self, operation: str) -> None:
        self.redis_failures.inc((operation,))

    def model_updated(self, model: str, step: str, outcome: str) -> None:
        self.model_updates.inc((model, step, outcome))

    def config_reloaded(self, outcome: str) -> None:
        self.config_reloads.inc((outcome,))

    # ---- Observer: the store and the router ----------------------------------------------
    def queue_waited(self, model: str, seconds: float) -> None:
        self.queue_wait.observe((model,), seconds)

    def loaded(self, model: str, seconds: float) -> None:
        self.loads.inc((model, "ok"))
        self.load_duration.observe((model,), seconds)

    def load_failed(self, model: str) -> None:
        self.loads.inc((model, "failed"))

    def unloaded(self, model: str, reason: UnloadReason) -> None:
        self.unloads.inc((model, reason))

    def attempt_failed(self, target: str, error: str) -> None:
        self.fallbacks.inc((target, error))

    def decided(self, role: str, source: str, language: str) -> None:
        self.decisions.inc((role, source, language))

    # ---- the gateway: one inference request ----------------------------------------------
    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.observe((model,), seconds)

    def finished(self, model: str, prompt_tokens: int, completion_tokens: int, generating_s: float) -> None:
        self.tokens.inc((model, "input"), prompt_tokens)
        self.tokens.inc((model, "output"), completion_tokens)
        if completion_tokens > 1:
            self.tpot.observe((model,), generating_s / (completion_tokens - 1))

    def redacted(self, counts: Mapping[str, int]) -> None:
        for kind, count in counts.items():
            self.redactions.inc((kind,), count)

    def council_call(self, council: str, kind: str, role: str, status: str, seconds: float) -> None:
        self.council_calls.inc((council, kind, role, status))
        if kind == "verdict" and status == "ok":
            self.verdict_duration.observe((council,), seconds)

    def answered(self, model: str, role: str, status: int, stream: bool, seconds: float) -> None:
        flag = "true" if stream else "false"
        self.requests.inc((model, role, str(status), flag))
        self.request_duration.observe((model, flag), seconds)
