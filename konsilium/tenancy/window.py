"""The rate limiter's policy: an exact sliding-window log per API key, with `now` passed in.

Three limits hold together per key: requests per period (rpm), tokens per period (tpm) and
requests in flight (max_parallel). Why a log of admissions and not something cheaper:

- a fixed window (a counter reset every minute) admits 2·rpm in the minute that straddles a
  reset: rpm at 0:59.9 and rpm again at 1:00.0;
- GCRA or a token bucket with a burst of b admits b at once and then one per P/rpm, so some
  window of length P holds up to 2b-1; with b = rpm that is the fixed window's flaw again;
- a sliding-window counter (two buckets, weighted) is an estimate, off either way.

The log is exact: in every window (t - P, t] at most rpm requests were admitted and at most tpm
tokens charged, and Retry-After is the exact moment enough old entries leave. It costs one entry
per admitted request per period (at most rpm), which is small at the limits a gateway sells.

Semantics, shared to the letter with `window.lua` (tests/test_redis_limiter.py checks both agree):

- an entry admitted at t is in the window at `now` iff t > now - P; a lease is live iff its
  expiry > now;
- a log is written only while its limit is set: a key with only max_parallel keeps no logs (a
  limit set later starts from an empty log: at most one period of under-counting);
- a refusal changes nothing, so retrying costs nothing and cannot starve itself;
- Retry-After is the max over the refusing limits: each, once met, stays met while nothing is
  admitted, so the max is the first moment all three hold. For requests and tokens it is exact.
  For parallel it is the earliest live lease's expiry: exact when nothing else happens (a lease
  nobody renews: a crashed replica's), later than needed when a request ends and releases its
  lease first, and too early when its replica renews it. It is an upper bound on the wait only
  for leases that are not renewed;
- a cost above tpm can never be admitted: refused as "tokens_too_large", with no Retry-After;
- `release(reserved, actual)` trues up the token entry of that request only if it still holds
  `reserved` (the Redis member is "id:reserved"): a second release of the same request is a no-op;
- `now` may step back (a clock adjusted, a failover to a replica whose clock is behind): logs stay
  in time order and an entry from the "future" counts as in the window, so a stepped clock makes
  the limiter stricter for a while, never lets a burst through;
- request ids must be unique per key (a uuid per request): Redis keeps one member per id.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

PERIOD_MS = 60_000
# The refusal reasons, indexed by the code window.lua returns.
REFUSALS = ("", "requests", "tokens", "parallel", "tokens_too_large")


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """A key's limits; None: not limited on that axis (Redis is passed 0 for it)."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_parallel"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or unset, not {value}")


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What an acquire decided, with what the x-ratelimit-* response headers need.

    remaining_* count after this admission; a refusal by one limit still reports the true headroom
    of the other (so a tokens refusal does not claim the requests are used up). reset_*_ms is
    the time until the oldest entry in the window leaves (the next replenishment), 0 when the log
    is empty. Each header field is None when that limit is not set.
    """

    admitted: bool
    refused_by: str = ""
    retry_after_ms: int | None = None
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_ms: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_ms: int | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a window holds at a moment, in one canonical order, to compare with Redis's copy."""

    requests: tuple[int, ...]  # admit times, oldest first
    tokens: tuple[tuple[int, str, int], ...]  # (admit time, id, cost), by time then id
    leases: tuple[tuple[str, int], ...]  # (id, expiry), by id


class _Spend:
    """One token-log entry; mutable because a release trues its cost up."""

    __slots__ = ("cost", "id", "t")

    def __init__(self, t: int, cost: int, id: str) -> None:
        self.t, self.cost, self.id = t, cost, id


def _time_of(spend: _Spend) -> int:
    return spend.t


class KeyWindow:
    """One key's logs and leases. Every operation is O(1) amortized plus, on a tokens refusal,
    the walk over the oldest entries that Retry-After needs (it stops as soon as enough leave)."""

    __slots__ = ("_by_id", "_expiries", "_horizon", "_leases", "_requests", "_spends", "_spent", "period_ms")

    def __init__(self, period_ms: int = PERIOD_MS) -> None:
        if period_ms < 1:
            raise ValueError(f"period_ms must be at least 1, not {period_ms}")
        self.period_ms = period_ms
        self._horizon = -math.inf  # nothing recorded lives past this: then the window is idle
        self._requests: deque[int] = deque()
        self._spends: deque[_Spend] = deque()
        self._by_id: dict[str, _Spend] = {}
        self._spent = 0  # the sum of the token log's costs
        self._leases: dict[str, int] = {}
        self._expiries: list[tuple[int, str]] = []  # a heap over the leases; stale entries dropped lazily

    def acquire(self, now: int, limits: Limits, cost: int, lease_id: str, lease_ttl_ms: int) -> Decision:
        """All three limits, all or nothing: an admission writes every log whose limit is set."""
        if cost < 0 or lease_ttl_ms < 1:
            raise ValueError(f"cost must be >= 0 and lease_ttl_ms >= 1, not {cost} and {lease_ttl_ms}")
        self._advance(now)
        if limits.tpm is not None and cost > limits.tpm:
            return self._decision(now, limits, "tokens_too_large", None)
        waits = (
            ("requests", self._requests_wait(now, limits.rpm)),
            ("tokens", self._tokens_wait(now, limits.tpm, cost)),
            ("parallel", self._parallel_wait(now, limits.max_parallel)),
        )
        refusing = [(name, wait) for name, wait in waits if wait is not None]
        if refusing:
            return self._decision(now, limits, refusing[0][0], max(wait for _, wait in refusing))
        self._admit(now, limits, cost, lease_id, lease_ttl_ms)
        return self._decision(now, limits, "", None)

    def release(self, now: int, lease_id: str, reserved: int, actual: int) -> None:
        """The request ended: its lease goes, its token entry's cost becomes `actual` (a refund
        when below the reservation, a further charge above it). An unknown id changes nothing."""
        if actual < 0:
            raise ValueError(f"actual must be >= 0, not {actual}")
        self._advance(now)
        self._leases.pop(lease_id, None)
        spend = self._by_id.get(lease_id)
        if spend is not None and spend.cost == reserved:
            self._spent += actual - reserved
            spend.cost = actual

    def renew(self, now: int, lease_ids: Iterable[str], lease_ttl_ms: int) -> None:
        """Live leases among `lease_ids` now expire at now + lease_ttl_ms; dead ones stay dead."""
        if lease_ttl_ms < 1:
            raise ValueError(f"lease_ttl_ms must be at least 1, not {lease_ttl_ms}")
        self._advance(now)
        expiry = now + lease_ttl_ms
        for lease_id in lease_ids:
            if lease_id in self._leases:
                self._leases[lease_id] = expiry
                heapq.heappush(self._expiries, (expiry, lease_id))
                self._horizon = max(self._horizon, expiry)

    def idle(self, now: float) -> bool:
        """Nothing recorded is in the window or live any more: the window can be forgotten."""
        return now >= self._horizon

    def snapshot(self, now: int) -> Snapshot:
        """The entries in the window and the live leases at `now` (read-only)."""
        horizon = now - self.period_ms
        return Snapshot(
            requests=tuple(t for t in self._requests if t > horizon),
            tokens=tuple(sorted((s.t, s.id, s.cost) for s in self._spends if s.t > horizon)),
            leases=tuple(sorted((i, e) for i, e in self._leases.items() if e > now)),
        )

    def _advance(self, now: int) -> None:
        horizon = now - self.period_ms
        requests, spends = self._requests, self._spends
        while requests and requests[0] <= horizon:
            requests.popleft()
        while spends and spends[0].t <= horizon:
            spend = spends.popleft()
            self._spent -= spend.cost
            if self._by_id.get(spend.id) is spend:
                del self._by_id[spend.id]
        self._drop_dead_leases(now)

    def _drop_dead_leases(self, now: int) -> None:
        """Pop the heap until its top is a live lease's current expiry (or the heap is empty)."""
        expiries, leases = self._expiries, self._leases
        while expiries:
            expiry, lease_id = expiries[0]
            current = leases.get(lease_id)
            if current == expiry and expiry > now:
                return
            heapq.heappop(expiries)
            if current == expiry:
                del leases[lease_id]

    def _requests_wait(self, now: int, rpm: int | None) -> int | None:
        count = len(self._requests)
        if rpm is None or count < rpm:
            return None
        return self._requests[count - rpm] + self.period_ms - now  # when count - rpm + 1 have left

    def _tokens_wait(self, now: int, tpm: int | None, cost: int) -> int | None:
        if tpm is None or self._spent + cost <= tpm:
            return None
        excess, freed = self._spent + cost - tpm, 0
        for spend in self._spends:  # oldest first; excess <= the sum since cost <= tpm
            freed += spend.cost
            if freed >= excess:
                return spend.t + self.period_ms - now
        raise AssertionError("the token log's sum is out of step with its entries")

    def _parallel_wait(self, now: int, max_parallel: int | None) -> int | None:
        if max_parallel is None or len(self._leases) < max_parallel:
            return None
        return self._expiries[0][0] - now  # the heap's top is the earliest live expiry

    def _admit(self, now: int, limits: Limits, cost: int, lease_id: str, lease_ttl_ms: int) -> None:
        if limits.rpm is not None:
            if self._requests and now < self._requests[-1]:
                bisect.insort_right(self._requests, now)  # the clock stepped back: keep time order
            else:
                self._requests.append(now)
        if limits.tpm is not None:
            spend = _Spend(now, cost, lease_id)
            if self._spends and now < self._spends[-1].t:
                bisect.insort_right(self._spends, spend, key=_time_of)
            else:
                self._spends.append(spend)
            self._by_id[lease_id] = spend
            self._spent += cost
        if limits.rpm is not None or limits.tpm is not None:
            self._horizon = max(self._horizon, now + self.period_ms)
        if limits.max_parallel is not None:
            expiry = now + lease_ttl_ms
            self._leases[lease_id] = expiry
            heapq.heappush(self._expiries, (expiry, lease_id))
            self._horizon = max(self._horizon, expiry)

    def _decision(self, now: int, limits: Limits, refused_by: str, retry_after_ms: int | None) -> Decision:
        period, rpm, tpm = self.period_ms, limits.rpm, limits.tpm
        requests, spends = self._requests, self._spends
        return Decision(
            admitted=not refused_by,
            refused_by=refused_by,
            retry_after_ms=retry_after_ms,
            limit_requests=rpm,
            remaining_requests=None if rpm is None else max(0, rpm - len(requests)),
            reset_requests_ms=None if rpm is None else (requests[0] + period - now if requests else 0),
            limit_tokens=tpm,
            remaining_tokens=None if tpm is None else max(0, tpm - self._spent),
            reset_tokens_ms=None if tpm is None else (spends[0].t + period - now if spends else 0),
        )


class LocalLimiter:
    """The limiter for one process (no Redis, or Redis down): a KeyWindow per key id.

    Idle keys are forgotten by a sweep that runs once as many calls as there are keys have gone
    by (at least `sweep_every`), so its cost is O(1) per call amortized and memory stays within
    about twice the keys active in the last period.
    """

    def __init__(
        self, *, period_ms: int = PERIOD_MS, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1024
    ) -> None:
        self.period_ms = period_ms
        self._clock = clock
        self._sweep_every = sweep_every
        self._windows: dict[str, KeyWindow] = {}
        self._calls = 0

    def __len__(self) -> int:
        """How many keys' windows are held (idle ones included until the next sweep)."""
        return len(self._windows)

    def acquire(self, key_id: str, limits: Limits, cost: int, lease_id: str, lease_ttl_ms: int) -> Decision:
        now = self._tick()
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = KeyWindow(self.period_ms)
        return window.acquire(now, limits, cost, lease_id, lease_ttl_ms)

    def release(self, key_id: str, lease_id: str, reserved: int, actual: int) -> None:
        now = self._tick()
        window = self._windows.get(key_id)
        if window is not None:
            window.release(now, lease_id, reserved, actual)

    def renew(self, key_id_to_lease_ids: Mapping[str, Sequence[str]], lease_ttl_ms: int) -> None:
        now = self._tick()
        for key_id, lease_ids in key_id_to_lease_ids.items():
            window = self._windows.get(key_id)
            if window is not None:
                window.renew(now, lease_ids, lease_ttl_ms)

    def _tick(self) -> int:
        now = math.floor(self._clock() * 1000)
        self._calls += 1
        if self._calls >= max(self._sweep_every, len(self._windows)):
            self._calls = 0
            self._windows = {key: window for key, window in self._windows.items() if not window.idle(now)}
        return now
