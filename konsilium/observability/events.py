"""What the store and the router report as it happens; `Metrics` listens (a no-op by default).

Gauges (queue depth, model state, memory, breakers) are read at scrape time instead
(`metrics.StateCollector`), so only events that a histogram or a counter needs come here.
"""

from __future__ import annotations

from typing import Literal, Protocol

UnloadReason = Literal["evicted", "idle", "admin", "shutdown", "retired"]


class Observer(Protocol):
    def queue_waited(self, model: str, seconds: float) -> None: ...

    def loaded(self, model: str, seconds: float) -> None: ...

    def load_failed(self, model: str) -> None: ...

    def unloaded(self, model: str, reason: UnloadReason) -> None: ...

    def attempt_failed(self, target: str, error: str) -> None: ...

    def decided(self, role: str, source: str, language: str) -> None: ...


class NoObserver:
    def queue_waited(self, model: str, seconds: float) -> None:
        pass

    def loaded(self, model: str, seconds: float) -> None:
        pass

    def load_failed(self, model: str) -> None:
        pass

    def unloaded(self, model: str, reason: UnloadReason) -> None:
        pass

    def attempt_failed(self, target: str, error: str) -> None:
        pass

    def decided(self, role: str, source: str, language: str) -> None:
        pass
