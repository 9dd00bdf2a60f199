"""What the router learns from real traffic: per-target latency and circuit breakers.

These hold state and read the clock (injected), so they live apart from the pure policy; the
router turns them into the plain `TargetState` snapshot that `choose_route` reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

EWMA_ALPHA = 0.3


def ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + EWMA_ALPHA * (sample - previous)


@dataclass
class Latency:
    """Exponentially weighted time to first token, time per output token and request time."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    request_ms: float | None = None

    def observe(self, ttft_ms: float, total_ms: float, tokens: int) -> None:
        self.ttft_ms = ewma(self.ttft_ms, ttft_ms)
        self.request_ms = ewma(self.request_ms, total_ms)
        if tokens > 1:
            self.tpot_ms = ewma(self.tpot_ms, (total_ms - ttft_ms) / (tokens - 1))


@dataclass
class Breaker:
    """Closed → open after `failures` in a row → after `cooldown_s`, one probe; its result decides."""

    failures: int
    cooldown_s: float
    clock: Callable[[], float]
    consecutive: int = 0
    open_until: float | None = None
    probing: bool = field(default=False)

    def blocked(self) -> bool:
        """Skip this target: open and cooling down, or half-open with its one probe under way."""
        if self.open_until is None:
            return False
        return self.clock() < self.open_until or self.probing

    def attempt(self) -> None:
        """A request goes to this target; past the cooldown it is the probe."""
        if self.open_until is not None:
            self.probing = True

    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "half_open" if self.probing or self.clock() >= self.open_until else "open"

    def success(self) -> None:
        self.consecutive, self.open_until, self.probing = 0, None, False

    def release(self) -> None:
        """The attempt proved nothing either way (the request was refused, or queued out): the
        breaker stays as it was, and a probe slot it took is free again."""
        self.probing = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            self.open_until, self.probing = self.clock() + self.cooldown_s, False
