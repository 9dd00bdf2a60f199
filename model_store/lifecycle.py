"""A model's lifecycle: one record per model and the one function that moves its state.

```
 unloaded ──load──▶ loading ──loaded──▶ ready ──unload──▶ unloading ──unloaded──▶ unloaded
     ▲                 │                  │
     │            load_failed           load  (its process died: loaded again, a new load)
     │                 ▼                  ▼
     └──(cooldown)── failed ──load──▶ loading
```

Every state change goes through `Entry.move(event)`, which consults `TRANSITIONS`: a move the
table does not allow is a bug and raises. `shutdown` is allowed from every state. The store
owns the records; nothing above it sees them (it shows `views.ModelView`s).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from konsilium.errors import InternalError
from konsilium.manifest import Manifest
from model_store.backend import Backend, State

Move = Literal["load", "loaded", "load_failed", "unload", "unloaded", "shutdown"]

TRANSITIONS: dict[tuple[State, Move], State] = {
    ("unloaded", "load"): "loading",
    ("failed", "load"): "loading",
    ("ready", "load"): "loading",  # the backend's process died since: a new load
    ("loading", "loaded"): "ready",
    ("loading", "load_failed"): "failed",
    ("unloaded", "load_failed"): "failed",  # the file could not be read: refused before booking
    ("failed", "load_failed"): "failed",
    ("ready", "unload"): "unloading",
    ("unloading", "unloaded"): "unloaded",
    ("unloading", "load"): "loading",  # a request came while it was going: booked again at once
    ("unloading", "load_failed"): "failed",
    ("loading", "unloaded"): "loading",  # the old process went away after a new load was booked
    ("failed", "unloaded"): "failed",
}


class LifecycleError(InternalError):
    """A state change the lifecycle does not allow: a bug in the store."""


def transition(state: State, move: Move) -> State:
    if move == "shutdown":
        return "unloaded"
    after = TRANSITIONS.get((state, move))
    if after is None:
        raise LifecycleError(f"a model cannot {move} while {state}")
    return after


@dataclass(eq=False)
class Entry:
    """One model as the store keeps it: lifecycle state, ledger share, leases and counters."""

    manifest: Manifest
    backend: Backend
    slots: asyncio.Semaphore
    state: State = "unloaded"
    reserved_mb: int = 0
    need_mb: int | None = None
    measured_mb: int | None = None
    last_used: float = 0.0
    last_used_wall: float | None = None
    leases: int = 0
    in_flight: int = 0
    queued: int = 0
    failed_until: float = 0.0
    last_error: str = ""
    load_seconds: float | None = None
    loads: int = 0
    load_task: asyncio.Task[None] | None = field(default=None, repr=False)
    key: str = ""  # unique in the store: the id, `id@candidate-N` (staged) or `id@retired-N` (draining)
    retired: bool = False  # replaced or removed: it finishes its requests, then unloads

    def __post_init__(self) -> None:
        self.key = self.key or self.manifest.id

    @property
    def id(self) -> str:
        return self.manifest.id

    def move(self, move: Move, *, reserve_mb: int = 0) -> None:
        """Change state; memory is booked on `load` and returned when the model holds none."""
        self.state = transition(self.state, move)
        if move == "load":
            self.reserved_mb = reserve_mb
        elif self.state in ("unloaded", "failed"):
            self.reserved_mb = 0
