"""What a council run tells its caller, as plain data: the events of its stream, and per call a
report (who answered, how it ended, how long it took, what it used)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal, Protocol

import msgspec

from model_store.types import Event, Usage

Status = Literal["ok", "failed", "timeout"]


class CallReport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One agent's (or the Director's, or a ranker's) call."""

    role: str
    status: Status
    started_ms: float  # from the council's start: the calls' timeline
    latency_ms: float
    model: str | None = None  # the model that answered (a LoRA adapter's base)
    adapter: str | None = None
    usage: Usage | None = None
    fallbacks: tuple[str, ...] = ()  # targets that failed before `model` answered
    error: str | None = None  # "code: message" when it did not end well


class CouncilSummary(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    council: str
    agents: tuple[CallReport, ...]
    director: CallReport
    usage: Usage  # every call's, summed
    ranking: tuple[str, ...] = ()  # roles, best first, when the council ranks
    rankers: tuple[CallReport, ...] = ()


# ---- the council's stream ------------------------------------------------------------------
class AgentOpened(msgspec.Struct, frozen=True):
    role: str
    model: str
    adapter: str | None


class AgentText(msgspec.Struct, frozen=True):
    role: str
    text: str


class AgentDone(msgspec.Struct, frozen=True):
    report: CallReport
    text: str  # the whole answer ("" unless ok)


class Ranked(msgspec.Struct, frozen=True):
    ranking: tuple[str, ...]  # roles, best first (empty: no ranker gave a usable ranking)
    rankers: tuple[CallReport, ...]


class VerdictOpened(msgspec.Struct, frozen=True):
    model: str
    adapter: str | None
    fallbacks: tuple[str, ...]


class CouncilDone(msgspec.Struct, frozen=True):
    summary: CouncilSummary


# the agents' events (as they arrive), `Ranked`, then `VerdictOpened`, the Director's own
# events (text, tool calls, `Finish`) and last `CouncilDone`
CouncilEvent = AgentOpened | AgentText | AgentDone | Ranked | VerdictOpened | CouncilDone | Event


def total_usage(reports: Iterable[CallReport]) -> Usage:
    used = [r.usage for r in reports if r.usage is not None]
    cached = [u.cached_tokens for u in used if u.cached_tokens is not None]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in used),
        completion_tokens=sum(u.completion_tokens for u in used),
        cached_tokens=sum(cached) if cached else None,
    )


# ---- what telemetry sees -------------------------------------------------------------------
class CallWatch(Protocol):
    def active(self) -> AbstractContextManager[object]:
        """While entered, the call's span is the current one (the dispatcher's spans nest in it)."""

    def done(self, report: CallReport) -> None: ...


class CouncilObserver(Protocol):
    def convened(self, council: str) -> None: ...

    def call(self, council: str, kind: Literal["agent", "ranking", "verdict"], role: str) -> CallWatch: ...


class _Unwatched:
    def active(self) -> AbstractContextManager[object]:
        return nullcontext()

    def done(self, report: CallReport) -> None:
        pass


class NoCouncilObserver:
    def convened(self, council: str) -> None:
        pass

    def call(self, council: str, kind: Literal["agent", "ranking", "verdict"], role: str) -> CallWatch:
        return _Unwatched()
