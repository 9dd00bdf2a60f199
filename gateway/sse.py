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

from litestar.types import Receive

from gateway.errors import to_gateway_error
from gateway.framing import Wire
from konsilium.errors import BackendError, ClientDisconnectedError, GatewayError
from model_store.store import Loading, Notice, StoreEvent
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


async def sse_stream(wire: Wire, first: StoreEvent, events: AsyncGenerator[StoreEvent, None]) -> AsyncIterator[bytes]:
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


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, but cancel it and raise `ClientDisconnectedError` if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # let `work` unwind before anyone closes it
    if task.cancelled():
        raise ClientDisconnectedError("the client disconnected")
    return task.result()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def ended_early() -> GatewayError:
    return BackendError("the backend ended the stream without finishing")
