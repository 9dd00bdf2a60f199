"""What the benchmark reports: result records, targets, verdicts and the printed tables.

Kept apart from the measuring code so the measurements stay short and the targets sit in one
place. The machine-load accounting lives here too: on two cores, another busy process makes
every figure meaningless, and the report must say so rather than print noise as a result.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

# Above this share of the machine used by other processes during a part, its figures are noise.
FOREIGN_LOAD_WARN = 0.10

TARGET_TPS_RATIO = 0.95
TARGET_ADDED_TTFT_MS = 10.0
TARGET_ADDED_LATENCY_MS = 1.0
# Not fixed by the issue: provisional budgets, consistent with <= 1 ms added latency per request.
TARGET_CPU_PER_REQUEST_MS = 1.0
TARGET_CPU_PER_CHUNK_US = 50.0


@dataclass(frozen=True)
class StreamRun:
    """One streamed generation: time to first content token, and decode speed after it."""

    ttft_s: float
    tokens_per_s: float
    content_chunks: int


@dataclass(frozen=True)
class ProxyResult:
    """Raw figures of the ``proxy`` part, in the units they are reported in."""

    direct_ms: list[float]
    proxied_ms: list[float]
    cpu_per_request_ms: float
    cpu_per_chunk_us: float
    stream_requests: int
    chunks_per_stream: int


@dataclass(frozen=True)
class Metric:
    """One reported figure; ``target`` None means informational, no verdict."""

    name: str
    value: float
    target: float | None = None
    higher_is_better: bool = False

    def verdict(self) -> str:
        if self.target is None:
            return "-"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if ok else "MISS"

    def target_text(self) -> str:
        if self.target is None:
            return "(info)"
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}"


@dataclass
class Report:
    """Everything measured so far; printed even when a later part fails."""

    direct: list[StreamRun] | None = None
    konsilium: list[StreamRun] | None = None
    proxy: ProxyResult | None = None


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 1]; no numpy needed for one number."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def stream_metrics(report: Report) -> list[Metric]:
    """Ratios of part b against part a, when both ran."""
    if not report.direct or not report.konsilium:
        return []
    direct_tps = statistics.median(r.tokens_per_s for r in report.direct)
    gateway_tps = statistics.median(r.tokens_per_s for r in report.konsilium)
    direct_ttft = statistics.median(r.ttft_s for r in report.direct)
    gateway_ttft = statistics.median(r.ttft_s for r in report.konsilium)
    return [
        Metric(
            "tokens/s ratio (konsilium/direct)",
            gateway_tps / direct_tps,
            TARGET_TPS_RATIO,
            higher_is_better=True,
        ),
        Metric("added TTFT ms", (gateway_ttft - direct_ttft) * 1e3, TARGET_ADDED_TTFT_MS),
        *best_run_metrics(report.direct, report.konsilium),
    ]


def best_run_metrics(direct: list[StreamRun], gateway: list[StreamRun]) -> list[Metric]:
    """The same ratios from each path's best run: outside load only ever slows a run down, so
    the best runs are the least disturbed ones. Informational; the verdicts use medians."""
    best_tps = max(r.tokens_per_s for r in gateway) / max(r.tokens_per_s for r in direct)
    best_ttft = min(r.ttft_s for r in gateway) - min(r.ttft_s for r in direct)
    return [
        Metric("tokens/s ratio, best runs", best_tps),
        Metric("added TTFT ms, best runs", best_ttft * 1e3),
    ]


def proxy_metrics(result: ProxyResult) -> list[Metric]:
    """Overhead figures of part c."""
    median_added = statistics.median(result.proxied_ms) - statistics.median(result.direct_ms)
    p90_added = percentile(result.proxied_ms, 0.9) - percentile(result.direct_ms, 0.9)
    return [
        Metric(
            "added latency per proxied request, median ms",
            median_added,
            TARGET_ADDED_LATENCY_MS,
        ),
        Metric("added latency per proxied request, p90 ms", p90_added),
        Metric(
            "gateway CPU per proxied request ms",
            result.cpu_per_request_ms,
            TARGET_CPU_PER_REQUEST_MS,
        ),
        Metric(
            "gateway CPU per streamed chunk us",
            result.cpu_per_chunk_us,
            TARGET_CPU_PER_CHUNK_US,
        ),
    ]


def print_stream_table(report: Report) -> None:
    """Medians of the generation runs, one row per path, with the spread to judge noise.

    llama.cpp's threads spin-wait, so any other busy process on the two cores slows a run
    many times over; a wide min..max range says the figures of that row are not to be trusted.
    ``chunks`` (fewest content chunks in a run) shows both paths generated the same tokens.
    """
    rows = [("llama-cpp direct", report.direct), ("konsilium llama_cpp", report.konsilium)]
    medians = f"{'TTFT ms (median)':>18}{'tokens/s (median)':>19}"
    print(f"{'path':<22}{medians}{'tokens/s min..max':>20}{'chunks':>8}{'runs':>6}")
    for name, runs in rows:
        if runs:
            ttft = statistics.median(r.ttft_s for r in runs) * 1e3
            rates = [r.tokens_per_s for r in runs]
            spread = f"{min(rates):.1f}..{max(rates):.1f}"
            chunks = min(r.content_chunks for r in runs)
            median = statistics.median(rates)
            print(f"{name:<22}{ttft:>18.1f}{median:>19.1f}{spread:>20}{chunks:>8}{len(runs):>6}")


def print_proxy_table(result: ProxyResult) -> None:
    """Latency distributions of the two non-streaming paths."""
    print(f"{'non-stream path':<22}{'median ms':>12}{'p90 ms':>10}{'requests':>10}")
    for name, values in (
        ("fake upstream direct", result.direct_ms),
        ("through konsilium", result.proxied_ms),
    ):
        median = statistics.median(values)
        p90 = percentile(values, 0.9)
        print(f"{name:<22}{median:>12.3f}{p90:>10.3f}{len(values):>10}")
    print(f"streamed: {result.stream_requests} requests x {result.chunks_per_stream} chunks")


def print_report(report: Report) -> None:
    """The tables, then every metric with its target and verdict."""
    print()
    if report.direct or report.konsilium:
        print_stream_table(report)
        print()
    metrics = stream_metrics(report)
    if report.proxy:
        print_proxy_table(report.proxy)
        print()
        metrics += proxy_metrics(report.proxy)
    if metrics:
        print(f"{'metric':<48}{'value':>10}  {'target':<10}{'verdict':>7}")
        for m in metrics:
            print(f"{m.name:<48}{m.value:>10.3f}  {m.target_text():<10}{m.verdict():>7}")


def system_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (steal excluded: not this machine's work)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def own_cpu_seconds() -> float:
    """CPU of this process and of the children it has already reaped (our servers)."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def report_foreign_load(name: str, wall_s: float, busy_s: float, own_s: float) -> None:
    """Say how much CPU other processes took during a part: on two cores it skews everything.

    Approximate: a grandchild re-parented away before we reap its parent counts as foreign.
    """
    cores = os.cpu_count() or 1
    share = max(0.0, busy_s - own_s) / (wall_s * cores) if wall_s > 0 else 0.0
    print(f"part {name} done in {wall_s:.1f} s; other processes used ~{share:.0%} of the CPU")
    if share > FOREIGN_LOAD_WARN:
        print(
            f"warning: part {name} shared the machine with other work; its figures are skewed",
            file=sys.stderr,
        )
