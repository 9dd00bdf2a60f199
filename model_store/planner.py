"""`plan_load`: what must leave memory so that a model can come in. Pure policy.

Plain data in, plain data out — no awaits, no clock, no logging (llama-swap: "a read that gates a
mutation is a bug"); the store takes the snapshot and carries the plan out under one lock.

Rules: only idle models may be evicted — never a pinned (`eager`) model, never one with a lease
(a request in flight or queued for it); least recently used first, and no more than needed. A
plan that says `fits` never exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class Resident(msgspec.Struct, frozen=True):
    """A model that holds memory now (loaded, or loading)."""

    id: str
    memory_mb: int
    last_used: float
    pinned: bool = False
    leases: int = 0

    @property
    def evictable(self) -> bool:
        return not self.pinned and self.leases == 0


class Plan(msgspec.Struct, frozen=True):
    fits: bool
    evict: tuple[str, ...] = ()
    reason: str = ""


def plan_load(target: str, need_mb: int, residents: Sequence[Resident], budget_mb: int) -> Plan:
    others = [r for r in residents if r.id != target]
    free = budget_mb - sum(r.memory_mb for r in others)
    if need_mb <= free:
        return Plan(fits=True)
    evict: list[str] = []
    for victim in sorted((r for r in others if r.evictable), key=lambda r: (r.last_used, r.id)):
        evict.append(victim.id)
        free += victim.memory_mb
        if need_mb <= free:
            return Plan(fits=True, evict=tuple(evict))
    return Plan(fits=False, reason=_why_not(target, need_mb, others, budget_mb))


def _why_not(target: str, need_mb: int, others: Sequence[Resident], budget_mb: int) -> str:
    def describe(r: Resident) -> str:
        why = "pinned" if r.pinned else f"{r.leases} in flight" if r.leases else "idle"
        return f"{r.id} {r.memory_mb} MB ({why})"

    resident = ", ".join(describe(r) for r in others) or "nothing"
    return f"{target} needs {need_mb} MB of a {budget_mb} MB budget; resident: {resident}"
