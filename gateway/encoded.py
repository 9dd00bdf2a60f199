"""`JsonResponse`: an encoded JSON body sent with its head made once; `PreparedResponse`, the
base it shares with the SSE stream's response (each makes its own ASGI app).

Litestar's `Response` becomes an `ASGIResponse` that files every header into a
`MutableScopeHeaders` (a linear scan per header, then `setdefault`s for the content type and
length): ~40 µs per answer under cProfile with the route headers an inference answer carries
(measured without the profiler, this and cheaper ids together: 7 % of a proxied request's CPU).
The body is already bytes (msgspec encoded it), so the head is the list uvicorn is handed,
built in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from litestar import Litestar, Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.types import TypeEncodersMap

JSON = b"application/json"


class PreparedResponse(Response[bytes]):
    """A response that makes its own ASGI app (`prepared`) from its headers merged with the
    route's: Litestar's one hook for that, `to_asgi_response`, in one place."""

    __slots__ = ()

    def prepared(self, headers: dict[str, str], *, is_head_response: bool) -> ASGIResponse:
        raise NotImplementedError

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # the route's headers first, the response's own win (as Litestar merges them)
        merged = {name.lower(): value for name, value in [*(headers or {}).items(), *self.headers.items()]}
        return self.prepared(merged, is_head_response=is_head_response)


class JsonResponse(PreparedResponse):
    __slots__ = ()

    def __init__(self, body: bytes, headers: Mapping[str, str] | None = None, status_code: int = 200) -> None:
        super().__init__(content=body, media_type=MediaType.JSON, headers=dict(headers or {}), status_code=status_code)

    def prepared(self, headers: dict[str, str], *, is_head_response: bool) -> ASGIResponse:
        head = [(b"content-type", JSON), (b"content-length", b"%d" % len(self.content))]
        head += [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in headers.items()]
        return _Encoded(self.content, self.status_code or 200, head, is_head_response=is_head_response)


class _Encoded(ASGIResponse):
    __slots__ = ("_head",)

    def __init__(self, body: bytes, status: int, head: list[tuple[bytes, bytes]], *, is_head_response: bool) -> None:
        # not ASGIResponse.__init__: its header mapping is what this skips; its other fields set here
        self._head, self.body, self.status_code, self.content_length = head, body, status, len(body)
        self.background, self.encoding, self._encoded_cookies = None, "utf-8", ()
        self.is_head_response = is_head_response

    def encode_headers(self) -> list[tuple[bytes, bytes]]:
        return self._head
