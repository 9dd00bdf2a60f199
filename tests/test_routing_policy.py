"""choose_route against snapshots, and the circuit breaker with an injected clock."""

from __future__ import annotations

import pytest

from routing.health import Breaker, Latency
from routing.policy import RouteDecision, RouteInput, Skipped, TargetState, choose_route, predicted_ms

BIG = TargetState(model="big", tier="primary", resident=False, context_length=32_000)
SMALL = TargetState(model="small", tier="lightweight", resident=True, context_length=4_096, ttft_ms=50)
AB = TargetState(model="ab", tier="secondary", resident=True, context_length=8_192)
CLOUD = TargetState(model="director", tier="primary", cloud=True, context_length=128_000)
SNAPSHOT = {s.model: s for s in (BIG, SMALL, AB, CLOUD)}


def decide(snapshot: dict[str, TargetState] = SNAPSHOT, **options: object) -> RouteDecision:
    route = RouteInput(role="dev", chain=("big", "small", "ab", "director"), **options)  # type: ignore[arg-type]
    return choose_route(route, snapshot, reason="trigger:x")


def test_order_is_the_chain_and_cloud_is_off_by_default() -> None:
    assert decide() == RouteDecision(
        target="big",
        fallbacks=("small", "ab"),
        skipped=(Skipped("director", "cloud target; allow_external_api is off"),),
        reason="trigger:x",
    )
    assert decide(cloud_refused="").fallbacks == ("small", "ab", "director")


def test_explicit_model_goes_first() -> None:
    assert decide(explicit_model="ab").target == "ab"


def test_context_too_small_is_skipped_and_whole_max_tokens_preferred() -> None:
    decision = decide(prompt_tokens=6_000)
    assert (decision.target, decision.fallbacks) == ("big", ("ab",))
    assert Skipped("small", "context 4096 < ~6001 tokens of prompt") in decision.skipped
    assert decide(explicit_model="small", prompt_tokens=3_000, max_tokens=4_000).target == "big"


def test_when_every_target_looks_too_small_the_tokenizer_decides() -> None:
    only_small = {"small": SMALL}
    decision = choose_route(RouteInput(role="dev", chain=("small",), prompt_tokens=10_000), only_small, "x")
    assert (decision.target, decision.skipped) == ("small", ())


def test_open_breaker_is_skipped() -> None:
    snapshot = {**SNAPSHOT, "big": TargetState(model="big", tier="primary", breaker_open=True)}
    decision = decide(snapshot)
    assert decision.target == "small"
    assert Skipped("big", "circuit breaker open") in decision.skipped


def test_a_latency_budget_prefers_a_target_predicted_to_meet_it() -> None:
    assert predicted_ms(BIG) == 2_200.0  # not resident: default load time + default first token
    assert predicted_ms(SMALL) == 50.0
    decision = decide(latency_budget_ms=500)
    assert (decision.target, decision.fallbacks, decision.reason) == ("small", ("ab", "big"), "latency:500ms")
    assert decide(latency_budget_ms=5_000).target == "big"  # the primary meets it too


def test_a_busy_target_is_predicted_slower() -> None:
    busy = TargetState(model="small", tier="lightweight", resident=True, queue_depth=3, ttft_ms=50, request_ms=1_000)
    assert predicted_ms(busy) == 3_050.0
    decision = decide({**SNAPSHOT, "small": busy}, latency_budget_ms=500)
    assert decision.target == "ab"


def test_ab_and_tier_requests() -> None:
    assert decide(ab=True).target == "ab"
    assert decide(tier="lightweight").target == "small"
    assert decide(tier="lightweight").reason == "tier:lightweight"


def test_a_short_answer_goes_to_the_micro_tier() -> None:
    micro = TargetState(model="tiny", tier="micro", resident=True, context_length=2_048)
    route = RouteInput(role="qa", chain=("big", "small", "tiny"), short_answer=True)
    decision = choose_route(route, {**SNAPSHOT, "tiny": micro}, "trigger:x")
    assert (decision.target, decision.fallbacks, decision.reason) == ("tiny", ("big", "small"), "tier:micro")
    assert decide(short_answer=True) == decide(), "no micro target in the chain: nothing moves"


@pytest.mark.parametrize(("small_busy", "expected"), [(False, ("small", "busy:big")), (True, ("big", "trigger:x"))])
def test_a_busy_first_target_gives_way_to_an_idle_lightweight_one(small_busy: bool, expected: tuple[str, str]) -> None:
    busy_big = TargetState(model="big", tier="primary", resident=True, busy=True, queue_depth=2)
    small = TargetState(model="small", tier="lightweight", resident=True, busy=small_busy)
    decision = decide({**SNAPSHOT, "big": busy_big, "small": small})
    assert (decision.target, decision.reason) == expected


def test_an_exact_token_count_decides_where_the_estimate_would_not() -> None:
    counted = TargetState(model="small", tier="lightweight", resident=True, context_length=4_096, prompt_tokens=3_000)
    assert decide({**SNAPSHOT, "small": counted}, prompt_tokens=6_000, tier="lightweight").target == "small"
    full = TargetState(model="small", tier="lightweight", resident=True, context_length=4_096, prompt_tokens=4_500)
    decision = decide({**SNAPSHOT, "small": full}, prompt_tokens=100, tier="lightweight")
    assert decision.target == "big"
    assert Skipped("small", "context 4096 < 4501 tokens of prompt") in decision.skipped
    only = choose_route(RouteInput(role="dev", chain=("small",), prompt_tokens=100), {"small": full}, "x")
    assert (only.target, only.too_long) == (None, True), "a counted prompt that does not fit is final"


def test_nothing_usable() -> None:
    decision = decide({"director": CLOUD})
    assert (decision.target, decision.too_long) == (None, False)
    assert len(decision.skipped) == 4


class FakeClock:
    """Injected time for the breaker (no sleeping in tests)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_cools_down_and_probes_once() -> None:
    clock = FakeClock()
    breaker = Breaker(failures=2, cooldown_s=30, clock=clock)
    breaker.failure()
    assert not breaker.blocked()
    breaker.failure()
    assert (breaker.blocked(), breaker.state()) == (True, "open")
    clock.now += 31
    assert (breaker.blocked(), breaker.state()) == (False, "half_open")
    breaker.attempt()  # the probe
    assert breaker.blocked(), "one probe at a time"
    breaker.failure()
    assert (breaker.blocked(), breaker.state()) == (True, "open")
    clock.now += 31
    breaker.attempt()
    breaker.success()
    assert (breaker.blocked(), breaker.state()) == (False, "closed")


@pytest.mark.parametrize(("samples", "ttft"), [([100.0], 100.0), ([100.0, 200.0], 130.0)])
def test_latency_is_exponentially_weighted(samples: list[float], ttft: float) -> None:
    latency = Latency()
    for sample in samples:
        latency.observe(ttft_ms=sample, total_ms=sample + 900, tokens=10)
    assert latency.ttft_ms == pytest.approx(ttft)
    assert latency.tpot_ms == pytest.approx(100.0)
