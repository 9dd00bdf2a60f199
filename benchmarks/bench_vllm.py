"""vLLM benchmark, through Konsilium: adapter hot-load, and tokens/s of the base vs an adapter.

Konsilium runs a managed vLLM (the `make vllm-env` environment: vLLM for CPUs, SmolLM2 as a
Hugging Face model, peft adapters) with `max_loras: 2` and three adapters. Asking for them in
turn (alpha, beta, gamma, alpha, ...) makes every request after the first two a cold adapter:
the least recently used one is unloaded and the asked one loaded before the first token.
Baselines from the same run: the time to first token of an adapter already resident, and the
base model's tokens/s.

Run: ``python -m benchmarks.bench_vllm [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.servers import REPO_ROOT, BenchmarkError, running_gateway

ASSETS = REPO_ROOT / ".cache" / "vllm"
ADAPTERS = ("lora-alpha", "lora-beta", "lora-gamma")


def model_yaml() -> str:
    manifest = {
        "id": "base", "format": "hf", "path": str(ASSETS / "smollm2-135m-hf"),
        "python": str(REPO_ROOT / ".venv-vllm" / "bin" / "python"), "n_ctx": 2048, "max_loras": 2,
        "max_lora_rank": 8, "max_concurrency": 8, "load": "eager", "load_timeout_s": 300,
        "vllm_args": ["--dtype", "bfloat16"], "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "adapters": [{"name": name, "path": str(ASSETS / "adapters" / name)} for name in ADAPTERS],
    }  # fmt: skip
    return f"  - {json.dumps(manifest)}\n"


def timed(client: httpx.Client, base: str, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, seconds from the first token to the end, completion tokens)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Write a long story about a robot."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise BenchmarkError(f"{model}: HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if first is None:
        raise BenchmarkError(f"{model}: no content arrived")
    return first - start, time.perf_counter() - first, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.bench_vllm")
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args(argv)
    if not (ASSETS / ".built").is_file():
        print("benchmark failed: run `make vllm-env` first", file=sys.stderr)
        return 1
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp,
            running_gateway(model_yaml() + "memory_budget_mb: 8000\n", Path(tmp)) as (base, _),
            httpx.Client(timeout=300) as client,
        ):
            timed(client, base, "base", 8)  # warm-up: vLLM compiles and caches on the first request
            rates: dict[str, list[float]] = {"base": [], "lora-alpha": []}
            for _ in range(3):
                for model in rates:
                    _, rest, tokens = timed(client, base, model, 64)
                    rates[model].append((tokens - 1) / rest)
            cold, warm = [], []
            for index in range(args.runs):
                adapter = ADAPTERS[(index + 2) % len(ADAPTERS)]  # gamma, alpha, beta, ...: never resident
                cold.append(timed(client, base, adapter, 4)[0])
                warm.append(timed(client, base, adapter, 4)[0])
            loads = client.get(f"{base}/admin/models").json()["models"][0]["adapters"]
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    base_rate, lora_rate = statistics.median(rates["base"]), statistics.median(rates["lora-alpha"])
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(f"SmolLM2-135M on vLLM 0.32 (CPU), max_loras 2, {args.runs} cold adapter requests; resident now: {loads}")
    print(f"{'adapter time to first token, resident (baseline) s':<56}{warm_s:9.3f}")
    print(f"{'adapter hot-load: cold adapter to first token s':<56}{cold_s:9.3f}")
    print(f"{'  added by unload + load':<56}{cold_s - warm_s:9.3f}  ({cold_s / warm_s:.2f}x)")
    print(f"{'tokens/s, base (baseline)':<56}{base_rate:9.1f}")
    print(f"{'tokens/s, through an adapter':<56}{lora_rate:9.1f}  ({lora_rate / base_rate:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
