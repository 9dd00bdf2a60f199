"""The HTTP/1.1 front door: uvicorn's httptools protocol with a bounded request head.

httptools (llhttp) limits neither the request target, nor a header's size, nor the number of
headers, and it gathers a header field whole before handing it over: a 32 MiB header would be
buffered and then served. This protocol counts while the head is parsed and never feeds the
parser more of a head than `max_url_bytes + max_header_bytes` (plus a request line's slack):

- the URL, as it arrives (`on_url` gets it in pieces): past `max_url_bytes`, 414 `uri_too_long`;
- each header field as it completes: past `max_headers` fields or `max_header_bytes` in all
  (name + value + 4 for ": " and CRLF), 431 `request_header_fields_too_large`;
- a head that has not ended when the feed limit is reached (one huge field): 431 too.

Every refusal, and uvicorn's own "Invalid HTTP request" 400, is rendered by the one error tree
as OpenAI's JSON; then the connection is closed "lingeringly" (nginx's `lingering_close`): the
answer and a FIN go out, and what the client is still sending is read and dropped for a moment,
so a client that is mid-upload reads the error instead of a connection reset.

A pipelined head that arrives in the same read as the previous request's end is counted from
the next read on: one read (256 KiB) more than the limit, at worst, is what the parser may hold.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway import protocol as p
from gateway.errors import error_object
from konsilium.config import Config
from konsilium.errors import GatewayError, HeadersTooLargeError, InvalidRequestError, UriTooLongError

REQUEST_LINE_SLACK = 64  # the method, spaces, "HTTP/1.1" and line ends around the URL and fields
LINGER_S = 2.0  # how long what a refused client still sends is read and dropped


@dataclass(frozen=True)
class HeadLimits:
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100

    @classmethod
    def of(cls, config: Config) -> HeadLimits:
        return cls(config.max_url_bytes, config.max_header_bytes, config.max_headers)

    @property
    def head_bytes(self) -> int:
        """The most of one request head the parser is ever fed."""
        return self.max_url_bytes + self.max_header_bytes + REQUEST_LINE_SLACK


class _Refused(Exception):
    """Raised from a parser callback to stop llhttp; the refusal itself is on the protocol."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing an oversized head while it is still arriving."""

    limits: ClassVar[HeadLimits] = HeadLimits()

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # until this message's headers are complete
        self._heads = 0  # heads completed on this connection
        self._head_fed = 0  # bytes of this head given to the parser
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: GatewayError | None = None
        self._lingering: TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # lingering: read and dropped
        room = self.limits.head_bytes - self._head_fed
        if not self._in_head or len(data) <= room:
            self._head_fed += len(data) if self._in_head else 0
            super().data_received(data)
            return
        heads = self._heads
        self._head_fed += room
        super().data_received(data[:room])
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._heads == heads:  # the head did not end within the most it may take
            self._refuse(_headers_too_large(self.limits))
        else:  # it did: the rest is its body, or the requests pipelined after it
            self.data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._stop(UriTooLongError(f"The request URL exceeds {self.limits.max_url_bytes} bytes (max_url_bytes)."))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            count = self.limits.max_headers
            self._stop(HeadersTooLargeError(f"The request has more than {count} headers (max_headers)."))
        if self._header_bytes > self.limits.max_header_bytes:
            self._stop(_headers_too_large(self.limits))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._heads = False, self._heads + 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_fed, self._header_bytes, self._header_count = True, 0, 0, 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error (ours raised from a callback, or llhttp's own, which
        uvicorn has logged)."""
        self._refuse(self._refusal or InvalidRequestError(msg), logged=self._refusal is None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def _stop(self, error: GatewayError) -> None:
        self._refusal = error
        raise _Refused(error.message)

    def _refuse(self, error: GatewayError, *, logged: bool = False) -> None:
        self._refusal = error
        if not logged:
            host = self.client[0] if self.client else "?"
            self.logger.warning("Refused a request head from %s: %d %s", host, error.status, error.code)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:  # its request was whole: the bad head is a pipelined one after it,
                cycle.keep_alive = False  # and nothing can follow that answer cleanly but a close
                return
            if cycle.response_started:  # its body broke while its answer streams: only a close is left
                self.transport.close()
                return
            cycle.disconnected = True  # its body broke: the app sees a disconnect, its answer is dropped
            cycle.message_event.set()
        self.transport.write(render_head_error(error, self.server_state.default_headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._lingering = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def _headers_too_large(limits: HeadLimits) -> HeadersTooLargeError:
    return HeadersTooLargeError(f"The request headers exceed {limits.max_header_bytes} bytes (max_header_bytes).")


def render_head_error(error: GatewayError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP response, written by hand: no ASGI cycle exists for a head never parsed."""
    body = p.encoder.encode(error_object(error))
    lines = [STATUS_LINE[error.status]]
    lines += [b"%s: %s\r\n" % pair for pair in default_headers]
    lines += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
    return b"".join([*lines, b"\r\n", body])


def bounded_protocol(limits: HeadLimits) -> type[asyncio.Protocol]:
    """The class to give uvicorn as `http=`: uvicorn makes one per connection with its own
    arguments, so the limits travel on the class."""

    class Configured(BoundedHttpToolsProtocol):
        pass

    Configured.limits = limits
    return Configured
