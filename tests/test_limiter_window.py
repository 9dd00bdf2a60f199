"""The rate limiter's pure policy (konsilium/tenancy/window.py): exact numbers in tables, and
properties over random traffic: no window of length P ever holds more than the limits, a refusal
is only ever given when a limit is really reached, Retry-After is exact to the millisecond, a
refusal changes nothing, a release refunds exactly, and leases bound the requests in flight."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from konsilium.tenancy.window import Decision, KeyWindow, Limits, LocalLimiter

P = 1_000  # a short period, so random traffic crosses many windows
TTL = 60_000


# ---------------------------------------------------------------- tables


def test_ten_per_minute_then_the_eleventh_waits_for_the_first_to_leave() -> None:
    window, limits = KeyWindow(60_000), Limits(rpm=10)
    for t in range(10):
        decision = window.acquire(t, limits, 0, f"r{t}", TTL)
        assert decision == Decision(
            admitted=True, limit_requests=10, remaining_requests=9 - t, reset_requests_ms=60_000 - t
        )
    refused = window.acquire(10, limits, 0, "r10", TTL)
    assert refused == Decision(
        admitted=False,
        refused_by="requests",
        retry_after_ms=60_000 - 10 + 0,
        limit_requests=10,
        remaining_requests=0,
        reset_requests_ms=59_990,
    )
    assert window.acquire(59_999, limits, 0, "r10", TTL).retry_after_ms == 1
    admitted = window.acquire(60_000, limits, 0, "r10", TTL)  # the entry of t=0 has just left
    assert (admitted.admitted, admitted.remaining_requests, admitted.reset_requests_ms) == (True, 0, 1)
    assert window.acquire(60_000, limits, 0, "r11", TTL).retry_after_ms == 1  # t=1 leaves at 60_001


def test_tokens_wait_for_just_enough_of_the_oldest_entries_to_leave() -> None:
    window, limits = KeyWindow(60_000), Limits(tpm=100)
    assert window.acquire(0, limits, 60, "a", TTL).remaining_tokens == 40
    second = window.acquire(1_000, limits, 30, "b", TTL)
    assert (second.remaining_tokens, second.reset_tokens_ms) == (10, 59_000)
    for cost, wait in ((20, 58_000), (50, 58_000), (95, 59_000), (100, 59_000)):
        refused = window.acquire(2_000, limits, cost, "c", TTL)
        assert (refused.refused_by, refused.retry_after_ms, refused.remaining_tokens) == ("tokens", wait, 10)
    assert window.acquire(2_000, limits, 10, "c", TTL).remaining_tokens == 0  # exactly at the limit


def test_a_lowered_limit_waits_for_enough_entries_to_leave() -> None:
    window = KeyWindow(60_000)
    for t in range(0, 50, 10):
        assert window.acquire(t, Limits(rpm=5), 0, f"r{t}", TTL).admitted
    refused = window.acquire(50, Limits(rpm=2), 0, "x", TTL)  # 5 in the window: 4 must leave, t=30 last
    assert (refused.retry_after_ms, refused.remaining_requests, refused.reset_requests_ms) == (59_980, 0, 59_950)
    assert not window.acquire(60_029, Limits(rpm=2), 0, "x", TTL).admitted
    assert window.acquire(60_030, Limits(rpm=2), 0, "x", TTL).admitted


def test_a_cost_above_tpm_is_never_admissible() -> None:
    window = KeyWindow(60_000)
    assert window.acquire(0, Limits(rpm=1), 0, "a", TTL).admitted
    refused = window.acquire(1, Limits(rpm=1, tpm=100), 101, "b", TTL)  # rpm refuses too: too large wins
    assert (refused.admitted, refused.refused_by, refused.retry_after_ms) == (False, "tokens_too_large", None)
    assert (refused.remaining_tokens, refused.reset_tokens_ms, refused.remaining_requests) == (100, 0, 0)


def test_a_release_trues_the_tokens_up_once() -> None:
    window, limits = KeyWindow(60_000), Limits(tpm=100)
    window.acquire(0, limits, 90, "a", TTL)
    window.release(10, "a", 90, 25)  # reserved 90, used 25: 65 come back
    assert window.acquire(20, limits, 75, "b", TTL).remaining_tokens == 0
    window.release(30, "a", 90, 0)  # a second release of "a" no longer matches its reservation
    assert window.acquire(40, limits, 1, "c", TTL).refused_by == "tokens"
    window.release(50, "b", 75, 100)  # used more than reserved: charged the difference
    assert window.snapshot(50).tokens == ((0, "a", 25), (20, "b", 100))
    window.release(60, "nobody", 1, 0)
    assert window.snapshot(60).tokens == ((0, "a", 25), (20, "b", 100))


def test_parallel_frees_on_release_or_when_a_lease_expires() -> None:
    window, limits = KeyWindow(60_000), Limits(max_parallel=2)
    assert window.acquire(0, limits, 0, "a", 30_000).admitted
    assert window.acquire(100, limits, 0, "b", 30_000).admitted
    refused = window.acquire(200, limits, 0, "c", 30_000)
    assert (refused.refused_by, refused.retry_after_ms, refused.limit_requests) == ("parallel", 29_800, None)
    window.release(300, "b", 0, 0)
    assert window.acquire(300, limits, 0, "c", 30_000).admitted
    window.renew(20_000, ["a", "gone"], 30_000)  # a lives to 50_000 now; "gone" was never leased
    assert window.snapshot(25_000).leases == (("a", 50_000), ("c", 30_300))
    assert window.acquire(25_000, limits, 0, "d", 30_000).retry_after_ms == 5_300  # c's expiry, not a's
    assert not window.acquire(30_299, limits, 0, "d", 30_000).admitted
    assert window.acquire(30_300, limits, 0, "d", 30_000).admitted  # c was not renewed: gone


def test_retry_after_is_the_latest_of_the_refusing_limits_and_refused_by_the_first() -> None:
    window, limits = KeyWindow(60_000), Limits(rpm=1, tpm=10, max_parallel=1)
    assert window.acquire(0, limits, 10, "a", 90_000).admitted
    refused = window.acquire(1_000, limits, 5, "b", 90_000)
    assert (refused.refused_by, refused.retry_after_ms) == ("requests", 89_000)  # the lease outlives the logs
    assert not window.acquire(89_999, limits, 5, "b", 90_000).admitted
    assert window.acquire(90_000, limits, 5, "b", 90_000).admitted


def test_without_limits_everything_is_admitted_and_nothing_recorded() -> None:
    window = KeyWindow(60_000)
    assert window.acquire(0, Limits(), 10**9, "a", TTL) == Decision(admitted=True)
    assert window.idle(0)
    assert window.snapshot(0).requests == window.snapshot(0).tokens == window.snapshot(0).leases == ()


def test_a_clock_stepping_back_keeps_the_log_in_order_and_stricter() -> None:
    window, limits = KeyWindow(60_000), Limits(rpm=2)
    window.acquire(100_000, limits, 0, "a", TTL)
    window.acquire(40_500, limits, 0, "b", TTL)  # 59.5 s back: "a" counts as in the window
    assert window.snapshot(40_500).requests == (40_500, 100_000)
    refused = window.acquire(40_600, limits, 0, "c", TTL)
    assert (refused.refused_by, refused.retry_after_ms) == ("requests", 60_000 - 100)


@pytest.mark.parametrize("field_name", ["rpm", "tpm", "max_parallel"])
def test_a_limit_of_zero_is_refused_at_construction(field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        Limits(**{field_name: 0})


def test_negative_costs_and_ttls_are_refused() -> None:
    with pytest.raises(ValueError, match="cost"):
        KeyWindow().acquire(0, Limits(), -1, "a", TTL)
    with pytest.raises(ValueError, match="lease_ttl_ms"):
        KeyWindow().renew(0, ["a"], 0)
    with pytest.raises(ValueError, match="actual"):
        KeyWindow().release(0, "a", 1, -1)


def test_a_full_heavy_key_answers_from_its_oldest_entries() -> None:
    window, limits = KeyWindow(60_000), Limits(rpm=10_000, tpm=10_000)
    for t in range(10_000):
        assert window.acquire(t, limits, 1, f"r{t}", TTL).admitted
    for t in range(10_000, 30_000):
        assert window.acquire(t, limits, 1, f"x{t}", TTL).retry_after_ms == 60_000 - t
    assert window.acquire(60_000, limits, 1, "y", TTL).admitted  # t=0 left, one slot and one token
    assert window.acquire(60_000, limits, 1, "z", TTL).retry_after_ms == 1


# ---------------------------------------------------------------- the local limiter


class FakeClock:
    """Stands in for time.monotonic: the tests move it."""

    def __init__(self) -> None:
        self.s = 1_000.0

    def __call__(self) -> float:
        return self.s


def test_the_local_limiter_reads_its_clock_in_milliseconds() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(clock=clock)
    assert limiter.acquire("k", Limits(rpm=1, max_parallel=1), 0, "a", 5_000).admitted
    clock.s += 1.5
    refused = limiter.acquire("k", Limits(rpm=1, max_parallel=1), 0, "b", 5_000)
    assert (refused.refused_by, refused.retry_after_ms) == ("requests", 58_500)
    limiter.renew({"k": ["a"], "unknown": ["z"]}, 100_000)  # a now expires at 1_101_500
    clock.s += 60.0
    assert limiter.acquire("k", Limits(max_parallel=1), 0, "b", 5_000).retry_after_ms == 40_000
    limiter.release("k", "a", 0, 0)
    limiter.release("unknown", "a", 0, 0)
    assert limiter.acquire("k", Limits(max_parallel=1), 0, "b", 5_000).admitted
    assert len(limiter) == 1  # "unknown" was never created


def test_the_local_limiter_forgets_idle_keys() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(clock=clock, sweep_every=8)
    for key in range(5):
        limiter.acquire(f"k{key}", Limits(rpm=5), 0, "a", 5_000)
    limiter.acquire("leased", Limits(max_parallel=1), 0, "a", 120_000)
    clock.s += 60.0  # the logs' entries have left; the lease lives on
    limiter.acquire("busy", Limits(rpm=5), 0, "b", 5_000)  # call 7: no sweep yet
    assert len(limiter) == 7
    limiter.acquire("busy", Limits(rpm=5), 0, "c", 5_000)  # call 8 sweeps
    assert len(limiter) == 2
    limiter.release("leased", "a", 0, 0)
    assert limiter.acquire("leased", Limits(max_parallel=1), 0, "d", 5_000).admitted  # its state was kept


# ---------------------------------------------------------------- properties

limits_strategy = st.builds(
    Limits,
    rpm=st.none() | st.integers(1, 6),
    tpm=st.none() | st.integers(1, 60),
    max_parallel=st.none() | st.integers(1, 3),
)
Op = tuple[str, int, int, int]
# (op, dt, a, b): acquire (cost, ttl), release (which admitted, actual), renew (which admitted, ttl), time passing
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 300), st.integers(0, 40), st.integers(1, 1_500)),
        st.tuples(st.just("release"), st.integers(0, 300), st.integers(0, 50), st.integers(0, 40)),
        st.tuples(st.just("renew"), st.integers(0, 300), st.integers(0, 50), st.integers(1, 1_500)),
    ),
    max_size=60,
)


@dataclass
class Admit:
    id: str
    t: int
    cost: int  # after its release: what it really used
    lease_expiry: int | None = None  # None: no lease, or released
    released: bool = False


@dataclass
class Trace:
    """What a test knows from outside: every admission and every refusal, with its moment."""

    admits: list[Admit] = field(default_factory=list)
    refusals: list[tuple[int, int, Decision]] = field(default_factory=list)  # (now, cost, decision)


def play(window: KeyWindow, limits: Limits, ops: list[Op], trace: Trace, *, refunds: bool, now: int = 0) -> int:
    """Run `ops` from `now` and return the time after them. Each admitted request is released at
    most once: at its reserved cost, or (`refunds`) at a lower one."""
    for name, dt, a, b in ops:
        now += dt
        if name == "acquire":
            lease_id = f"r{len(trace.admits)}-{len(trace.refusals)}"
            decision = window.acquire(now, limits, a, lease_id, b)
            if decision.admitted:
                expiry = now + b if limits.max_parallel is not None else None
                trace.admits.append(Admit(lease_id, now, a, expiry))
            else:
                trace.refusals.append((now, a, decision))
            continue
        pending = [admit for admit in trace.admits if not admit.released]
        if not pending:
            continue
        admit = pending[a % len(pending)]
        if name == "release":
            actual = min(b, admit.cost) if refunds else admit.cost
            window.release(now, admit.id, admit.cost, actual)
            admit.cost, admit.lease_expiry, admit.released = actual, None, True
        elif admit.lease_expiry is not None and admit.lease_expiry > now:
            window.renew(now, [admit.id], b)
            admit.lease_expiry = now + b
    return now


def in_window(admits: list[Admit], now: int) -> list[Admit]:
    return [a for a in admits if now - P < a.t <= now]


def leased(admits: list[Admit], now: int) -> list[tuple[str, int]]:
    return sorted((a.id, a.lease_expiry) for a in admits if a.lease_expiry is not None and a.lease_expiry > now)


def spent(window: KeyWindow, now: int) -> int:
    return sum(cost for _, _, cost in window.snapshot(now).tokens)


@settings(max_examples=200, deadline=None)
@given(limits_strategy, ops_strategy)
def test_no_window_ever_holds_more_than_the_limits(limits: Limits, ops: list[Op]) -> None:
    trace = Trace()
    play(KeyWindow(P), limits, ops, trace, refunds=False)
    for admit in trace.admits:  # a window of length P holds the most when it ends at an admission
        inside = in_window(trace.admits, admit.t)
        assert limits.rpm is None or len(inside) <= limits.rpm
        assert limits.tpm is None or sum(a.cost for a in inside) <= limits.tpm


@settings(max_examples=200, deadline=None)
@given(limits_strategy, ops_strategy)
def test_a_refusal_names_the_first_limit_really_reached(limits: Limits, ops: list[Op]) -> None:
    window, trace, now = KeyWindow(P), Trace(), 0
    for op in ops:  # one at a time: the leases in flight are only known at the moment
        refused = len(trace.refusals)
        now = play(window, limits, [op], trace, refunds=True, now=now)
        if len(trace.refusals) == refused:
            continue
        _, cost, decision = trace.refusals[-1]
        inside = in_window(trace.admits, now)
        requests_full = limits.rpm is not None and len(inside) >= limits.rpm
        tokens_full = limits.tpm is not None and sum(a.cost for a in inside) + cost > limits.tpm
        parallel_full = limits.max_parallel is not None and len(leased(trace.admits, now)) >= limits.max_parallel
        if limits.tpm is not None and cost > limits.tpm:
            assert decision.refused_by == "tokens_too_large"
        else:
            first = "requests" if requests_full else "tokens" if tokens_full else "parallel" if parallel_full else ""
            assert decision.refused_by == first != ""


@settings(max_examples=200, deadline=None)
@given(st.lists(limits_strategy, min_size=1, max_size=2), ops_strategy)
def test_retry_after_is_exact_and_a_refusal_changes_nothing(choices: list[Limits], ops: list[Op]) -> None:
    """With the limits changing now and then, as when an admin edits a key."""
    window, trace, now = KeyWindow(P), Trace(), 0
    for i, op in enumerate(ops):
        refused, limits = len(trace.refusals), choices[i // 5 % len(choices)]  # five ops under each
        now = play(window, limits, [op], trace, refunds=True, now=now)
        if len(trace.refusals) == refused:
            continue
        _, cost, decision = trace.refusals[-1]
        before = window.snapshot(now)
        assert window.acquire(now, limits, cost, "again", 1) == decision
        assert window.snapshot(now) == before
        if decision.retry_after_ms is None:
            assert decision.refused_by == "tokens_too_large"
            continue
        wait = decision.retry_after_ms
        assert wait >= 1
        assert not copy.deepcopy(window).acquire(now + wait - 1, limits, cost, "early", 1).admitted
        assert copy.deepcopy(window).acquire(now + wait, limits, cost, "on-time", 1).admitted


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), ops_strategy)
def test_a_release_below_the_reservation_frees_exactly_the_difference(tpm: int, ops: list[Op]) -> None:
    window, limits, trace, now = KeyWindow(P), Limits(tpm=tpm), Trace(), 0
    for op in ops:
        held = {a.id: (a.cost, a.t > now + op[1] - P) for a in trace.admits if not a.released}
        before = spent(window, now + op[1])
        now = play(window, limits, [op], trace, refunds=True, now=now)
        released = [a for a in trace.admits if a.released and a.id in held]
        if not released:
            continue
        reserved, in_window_still = held[released[0].id]
        assert before - spent(window, now) == (reserved - released[0].cost if in_window_still else 0)
        headroom = tpm - spent(window, now)
        if headroom >= 0:
            assert copy.deepcopy(window).acquire(now, limits, headroom, "fits", 1).admitted
        if 0 <= headroom < tpm:
            assert not copy.deepcopy(window).acquire(now, limits, headroom + 1, "over", 1).admitted


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), ops_strategy)
def test_leases_bound_the_requests_in_flight_and_expire_unless_renewed(max_parallel: int, ops: list[Op]) -> None:
    window, limits, trace, now = KeyWindow(P), Limits(max_parallel=max_parallel), Trace(), 0
    for op in ops:
        now = play(window, limits, [op], trace, refunds=False, now=now)
        live = window.snapshot(now).leases
        assert len(live) <= max_parallel
        assert list(live) == leased(trace.admits, now)  # exactly those neither released nor expired
    end = max([now] + [a.lease_expiry for a in trace.admits if a.lease_expiry is not None])
    assert window.snapshot(end).leases == ()  # nobody renewed them again: all gone
    assert all(window.acquire(end, limits, 0, f"after{i}", 10).admitted for i in range(max_parallel))
