"""Prometheus instruments, one registry per application (tests build several in one process).

Counters and histograms move on events (`Observer` methods and the gateway's request hooks);
gauges are read from the store and the router at scrape time (`gateway/metrics.py`). Names
end in their unit; `_total` is added to counters by the client library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

from konsilium.observability.events import UnloadReason

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        cast(Callable[[], None], disable_created_metrics)()  # no `_created` series: half the scrape
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "konsilium_requests", "Inference requests answered, by the model that answered (or the one asked for)",
            ["model", "role", "status", "stream"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "konsilium_request_duration_seconds", "Whole inference requests, to the last byte",
            ["model", "stream"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "konsilium_time_to_first_token_seconds", "From the request's arrival to its first token",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            "konsilium_time_per_output_token_seconds", "Between output tokens, after the first",
            ["model"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("konsilium_tokens", "Tokens in and out", ["model", "direction"], registry=r)
        self.queue_wait = Histogram(
            "konsilium_queue_wait_seconds", "Waiting for a model's slot", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.loads = Counter("konsilium_model_loads", "Model loads, by outcome", ["model", "outcome"], registry=r)
        self.load_duration = Histogram(
            "konsilium_model_load_duration_seconds", "Successful model loads", ["model"], buckets=LOAD_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.unloads = Counter(
            "konsilium_model_unloads", "Model unloads; reason evicted counts evictions", ["model", "reason"], registry=r
        )
        self.fallbacks = Counter(
            "konsilium_fallbacks", "Targets that failed before answering, so the next one was tried",
            ["target", "error"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "konsilium_routing_decisions", "Routing decisions by role, how it was found and the prompt's language",
            ["role", "source", "language"], registry=r,
        )  # fmt: skip

    # ---- Observer: the store and the router ----------------------------------------------
    def queue_waited(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(model).observe(seconds)

    def loaded(self, model: str, seconds: float) -> None:
        self.loads.labels(model, "ok").inc()
        self.load_duration.labels(model).observe(seconds)

    def load_failed(self, model: str) -> None:
        self.loads.labels(model, "failed").inc()

    def unloaded(self, model: str, reason: UnloadReason) -> None:
        self.unloads.labels(model, reason).inc()

    def attempt_failed(self, target: str, error: str) -> None:
        self.fallbacks.labels(target, error).inc()

    def decided(self, role: str, source: str, language: str) -> None:
        self.decisions.labels(role, source, language).inc()

    # ---- the gateway: one inference request ----------------------------------------------
    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def finished(self, model: str, prompt_tokens: int, completion_tokens: int, generating_s: float) -> None:
        self.tokens.labels(model, "input").inc(prompt_tokens)
        self.tokens.labels(model, "output").inc(completion_tokens)
        if completion_tokens > 1:
            self.tpot.labels(model).observe(generating_s / (completion_tokens - 1))

    def answered(self, model: str, role: str, status: int, stream: bool, seconds: float) -> None:
        flag = "true" if stream else "false"
        self.requests.labels(model, role, str(status), flag).inc()
        self.request_duration.labels(model, flag).observe(seconds)
