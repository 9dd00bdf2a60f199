"""Routing benchmark: how long one decision (role + target) takes for a 2 KB prompt.

The decision is the whole role layer (triggers in context, then the classifier) and the target.
Prompts are 2 KB mixes of the eval set's texts (Russian, English, layouts, transliteration).
Measured in the same run: warm (tokens seen before, the steady state of a server), cold (the
token cache emptied before every decision), the naive substring baseline, and two references:
the decision with the role named (`x-konsilium-role`: the target alone, no reading), and the
text split into chunks and hashed into a set (what any chunk reader pays before it reads).
Targets: warm p99 <= 100 us typical, <= 200 us dense.

Run: ``python -m benchmarks.bench_routing [--decisions N]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TypeVar, cast

from konsilium.config import default_config
from model_store.store import ModelStore
from model_store.types import GenerationRequest, Message
from routing.dispatch import Dispatcher
from routing.eval import DEFAULT_SET, Example, load_examples, naive_router
from routing.requests import RouteRequest
from routing.router import Router, load_routing_rules

TARGETS_P99_US = {"typical": 100.0, "dense": 200.0}
PROMPT_CHARS = 2048
AUTO = RouteRequest(model="auto")
NAMED = RouteRequest(model="auto", role="dev")
T = TypeVar("T")


CODE = Path(__file__).read_text(encoding="utf-8")  # realistic code context: this very file


def prompts(count: int, seed: int = 7) -> list[str]:
    """Worst case: 2 KB made only of eval prompts, so trigger words and phrase anchors are dense."""
    texts = [e.text for e in load_examples(DEFAULT_SET)]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < PROMPT_CHARS:
            parts.append(rng.choice(texts))
        out.append(" ".join(parts)[:PROMPT_CHARS])
    return out


def coding_prompts(count: int, seed: int = 7) -> list[str]:
    """Typical agent traffic: one eval request, then pasted context (code, outside fences) to 2 KB."""
    texts = [e.text for e in load_examples(DEFAULT_SET)]
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        request = rng.choice(texts)
        start = rng.randrange(0, len(CODE) - PROMPT_CHARS)
        out.append((request + "\n\n" + CODE[start:])[:PROMPT_CHARS])
    return out


def timed_us(
    action: Callable[[str], object], texts: list[str], before: Callable[[], None] | None = None
) -> list[float]:
    samples = []
    for text in texts:
        if before is not None:
            before()
        start = time.perf_counter_ns()
        action(text)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def completed(work: Coroutine[object, None, T]) -> T:
    """Run a coroutine that never suspends (a short prompt is not counted in a thread) without
    an event loop, so the figures are the decision's and not the loop's."""
    try:
        work.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    raise RuntimeError("the decision suspended")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.bench_routing")
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args(argv)
    config = default_config()
    rules = load_routing_rules(config)
    router = Router(config, rules)
    dispatcher = Dispatcher(ModelStore(config), router)
    dense, coding = prompts(200), coding_prompts(200)

    def decide(text: str, route: RouteRequest = AUTO) -> object:  # the dispatcher's own decision
        generation = GenerationRequest(kind="chat", messages=(Message(role="user", content=text),))
        return completed(dispatcher.explain(generation, route))

    naive = naive_router(rules)
    gc.collect()
    gc.freeze()  # as `konsilium serve` does after start-up: the collector skips the start-up heap
    print(f"{args.decisions} decisions on {PROMPT_CHARS}-character prompts (200 distinct each), one core")
    print(f"{'':<48}{'p50 us':>10}{'p99 us':>10}")
    verdicts = []
    for kind, label, texts in (
        ("typical", "typical (request + code context)", coding),
        ("dense", "dense (2 KB of trigger-rich requests)", dense),
    ):
        for text in texts:  # warm the token memory: the steady state of a running server
            decide(text)
        rounds = [texts[i % len(texts)] for i in range(args.decisions)]
        warm = timed_us(decide, rounds)
        cold = timed_us(decide, texts, before=router.forget_reading)
        baseline = timed_us(lambda t: naive(Example(text=t, role="dev")), rounds)
        named = timed_us(lambda t: decide(t, NAMED), rounds)
        floor = timed_us(lambda t: set(t.split()), rounds)
        print(label)
        for name, samples in (("  router, warm token memory", warm), ("  router, cold token memory", cold),
                              ("  naive substring baseline", baseline), ("  role named: the target alone", named),
                              ("  split + set of the text alone", floor)):  # fmt: skip
            print(f"{name:<48}{statistics.median(samples):>10.1f}{percentile(samples, 0.99):>10.1f}")
        p99, target = percentile(warm, 0.99), TARGETS_P99_US[kind]
        verdicts.append(f"{kind} warm p99 {p99:.1f} us, target <= {target:g} us: {'PASS' if p99 <= target else 'MISS'}")
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
