"""The last inference requests this process answered, for the status page (`GET /admin/status`).

A bounded ring in memory (the newest `size`, 200 by default): the observing middleware appends
the request's finished record when its last byte has gone, so the request path pays one tuple
and a `deque.append`. What it keeps is what the access log line says — never a
prompt or an answer, unless `telemetry.record_content` is on (then the last user message and
the answer, each cut to `CONTENT_CHARS`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from gateway.observe import RequestRecord

RECENT_REQUESTS = 200
CONTENT_CHARS = 2000


class RecentRequest(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One answered request as the status page shows it; encoded as is by msgspec."""

    time: float  # wall clock when its last byte went, seconds since the epoch
    request_id: str
    path: str
    status: int
    duration_ms: float
    stream: bool
    role: str  # the agent role routed to ("council" for a council), "" before routing
    model: str  # the model that answered, else the one asked for
    route: str  # the routing decision's reason (`trigger:…`, `classifier`, `explicit`, `council:default`…)
    fallbacks: tuple[str, ...]  # the targets that failed before the one that answered
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    error: str  # the error code, "" when none
    key: str  # the API key's name (never its secret), "" with keys off
    prompt: str | None = None  # only with telemetry.record_content
    answer: str | None = None  # only with telemetry.record_content


class RecentRequests:
    """The ring. One event loop appends and reads it, so it needs no lock. It keeps each finished
    record as it is (nothing writes to it once its last byte has gone) and makes the structs
    when the page asks: a request pays a tuple and an append, a poll 200 small structs."""

    def __init__(
        self, size: int = RECENT_REQUESTS, *, record_content: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self._ring: deque[tuple[float, str, int, float, RequestRecord]] = deque(maxlen=size)
        self._content = record_content
        self._clock = clock

    @property
    def record_content(self) -> bool:
        return self._content

    def add(self, record: RequestRecord, path: str, status: int, seconds: float) -> None:
        if self._content:  # what is kept stays bounded, whatever the prompt's size
            record.prompt, record.answer = _cut(record.prompt), _cut(record.answer)
        self._ring.append((self._clock(), path, status, seconds, record))

    def newest_first(self) -> list[RecentRequest]:
        content = self._content
        return [
            RecentRequest(
                time=round(at, 3), request_id=r.request_id, path=path, status=status,
                duration_ms=round(seconds * 1000, 1), stream=r.stream, role=r.role, model=r.model, route=r.route,
                fallbacks=r.fallbacks, ttft_ms=None if r.ttft_ms is None else round(r.ttft_ms, 1),
                prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens, error=r.error, key=r.key,
                prompt=r.prompt if content else None, answer=r.answer if content else None,
            )
            for at, path, status, seconds, r in reversed(self._ring)
        ]  # fmt: skip


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:CONTENT_CHARS]
