"""Server-sent event streams, framed by the API's `Wire`, and waiting that notices a client leaving.

A stream is the wire's opening, a frame per event, the finish, then the wire's closing (OpenAI's
`data: [DONE]`); a failure after the first byte becomes the wire's failure frame (for chat, a
`data: {"error": ...}` frame, what the OpenAI SDK raises as `APIError`). SSE comments keep
clients and proxies waiting while a model loads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from gateway.encoded import PreparedResponse
from gateway.errors import to_gateway_error
from gateway.framing import Wire
from konsilium.errors import BackendError, ClientDisconnectedError, GatewayError
from model_store.notices import Loading, Notice, StoreEvent
from model_store.types import Event, Finish

log = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
HEARTBEAT_S = 2.0
T = TypeVar("T")


def comment(text: str) -> bytes:
    """An SSE comment line: clients (the OpenAI SDK too) ignore it; proxies see traffic."""
    return b": " + text.encode("utf-8", errors="replace").replace(b"\n", b" ") + b"\n\n"


def _backend_event(event: StoreEvent) -> Event:
    assert not isinstance(event, Notice), "the store sends notices only before the first event"
    return event


async def sse_stream(
    wire: Wire, first: StoreEvent, events: AsyncGenerator[StoreEvent, None]
) -> AsyncGenerator[bytes, None]:
    waiting: asyncio.Future[StoreEvent] | None = None
    try:
        if isinstance(first, Loading):  # keep clients and proxies from timing out while it loads
            yield comment(f"loading {first.model}")
            waiting = asyncio.ensure_future(anext(events))
            while not (await asyncio.wait({waiting}, timeout=HEARTBEAT_S))[0]:
                yield comment(f"loading {first.model}")
            first = waiting.result()
        event = _backend_event(first)
        yield wire.opening()
        while not isinstance(event, Finish):
            yield wire.delta(event)
            event = _backend_event(await anext(events))
        yield wire.finish(event)
    except Exception as exc:  # after the first byte every failure becomes an error frame
        error = ended_early() if isinstance(exc, StopAsyncIteration) else to_gateway_error(exc)
        log.warning("stream failed after it began: %s", error.message)
        yield wire.failure(error)
    finally:
        if waiting is not None and not waiting.done():
            waiting.cancel()  # its cancellation unwinds and closes `events` in that task
        else:
            await events.aclose()
    yield wire.closing


async def paced(events: AsyncGenerator[T, None], note: str) -> AsyncGenerator[T | bytes, None]:
    """`events`, with an SSE comment (`note`) whenever none comes for `HEARTBEAT_S`: a stream whose
    next event may be far off (a council's agents thinking) keeps clients and proxies waiting.
    Each event is awaited in a task; leaving early cancels a pending one (its cancellation unwinds
    and closes `events` in that task), else closes `events` here."""
    waiting: asyncio.Future[T] | None = None
    try:
        while True:
            waiting = asyncio.ensure_future(anext(events))
            while not (await asyncio.wait({waiting}, timeout=HEARTBEAT_S))[0]:
                yield comment(note)
            try:
                item = waiting.result()
            except StopAsyncIteration:
                return
            waiting = None
            yield item
    finally:
        if waiting is not None and not waiting.done():
            waiting.cancel()
        else:
            await events.aclose()


async def collect(first: StoreEvent, events: AsyncIterator[StoreEvent]) -> list[Event]:
    """The whole answer of a non-streaming request, its first event included (which may be the
    `Finish` itself: a model whose first token is end-of-sequence answers with empty text)."""
    collected = [] if isinstance(first, Notice) else [first]
    collected += [event async for event in events if not isinstance(event, Notice)]
    if not collected or not isinstance(collected[-1], Finish):
        raise ended_early()
    return collected


class DisconnectWatch:
    """One task per request that notices the client leaving and cancels the request's own task
    there and then; `guard` turns that cancellation into `ClientDisconnectedError`.

    Created where the request's body has been read (uvicorn's `receive` then only says
    `http.disconnect`), released before a whole answer is sent, or handed to the `SseResponse`,
    which stops it after the stream's last byte. The request task only yields to the loop inside
    `guard`, so the cancellation always lands there."""

    def __init__(self, receive: Receive) -> None:
        owner = asyncio.current_task()
        assert owner is not None, "made inside a request's task"
        self._owner = owner
        self._gone = False
        self._handed_over = False
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self._owner.cancel()

    async def guard(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except asyncio.CancelledError:
            if not self._gone:
                raise  # a shutdown, not the client
            self._owner.uncancel()
            raise ClientDisconnectedError("the client disconnected") from None

    def hand_over(self) -> DisconnectWatch:
        self._handed_over = True
        return self

    def release(self) -> None:
        """Stop watching, unless a stream took the watch over (it stops it when it ends)."""
        if not self._handed_over:
            self.stop()

    def stop(self) -> None:
        self._task.cancel()


class SseResponse(PreparedResponse):
    """`text/event-stream` frames sent as they come, watched by the request's `DisconnectWatch`
    (Litestar's `Stream` starts an anyio task group per response to do the same)."""

    __slots__ = ("frames", "watch")

    def __init__(self, frames: AsyncGenerator[bytes, None], headers: dict[str, str], watch: DisconnectWatch) -> None:
        super().__init__(content=b"", media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
        self.frames, self.watch = frames, watch.hand_over()

    def prepared(self, headers: dict[str, str], *, is_head_response: bool) -> ASGIResponse:
        return _WatchedStream(self.frames, headers, self.watch)


class _WatchedStream(ASGIStreamingResponse):
    __slots__ = ("frames", "watch")

    def __init__(self, frames: AsyncGenerator[bytes, None], headers: dict[str, str], watch: DisconnectWatch) -> None:
        super().__init__(iterator=frames, headers=headers, media_type="text/event-stream", content_length=0)
        self.frames, self.watch = frames, watch

    async def send_body(self, send: Send, receive: Receive) -> None:
        try:
            await self.watch.guard(self._send_frames(send))
        except ClientDisconnectedError:
            pass  # nobody is left to tell
        finally:
            self.watch.stop()
            await self.frames.aclose()

    async def _send_frames(self, send: Send) -> None:
        async for frame in self.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def ended_early() -> GatewayError:
    return BackendError("the backend ended the stream without finishing")
