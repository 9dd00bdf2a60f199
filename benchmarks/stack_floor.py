"""Konsilium's own stack with nothing of Konsilium in it: where its cost per request comes from.

The same pass-through as ``benchmarks.floor_proxy`` (one pooled aiohttp client, the answer
relayed as read, no parsing), served the way Konsilium is served:

* ``--framework asgi``: uvicorn (httptools, uvloop when installed, as ``konsilium serve``) and a
  bare ASGI callable: what the server costs;
* ``--framework litestar``: the same under Litestar, one route: what the framework adds.

``benchmarks.bench_gateways`` measures both beside the floor and Konsilium, so the gap between
Konsilium and the floor splits into server, framework and Konsilium's own code per request.

Run: ``python -m benchmarks.stack_floor --framework asgi|litestar --port P --upstream URL``;
it serves ``GET /health`` once listening.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON = {"content-type": "application/json"}


class Upstream:
    """The pooled client and the one URL every request is forwarded to."""

    def __init__(self, base: str) -> None:
        self.url = base.rstrip("/") + "/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, body: bytes) -> aiohttp.ClientResponse:
        assert self.session is not None, "started with the app"
        return await self.session.post(self.url, data=body, headers=JSON)


def is_stream(response: aiohttp.ClientResponse) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


async def relayed(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for data in response.content.iter_any():
            yield data
    finally:
        response.release()


def asgi_app(upstream: Upstream) -> Callable[[Message, Receive, Send], Awaitable[None]]:
    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await upstream.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def forward(receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        response = await upstream.post(body)
        kind = response.headers.get("content-type", "application/json").encode()
        if is_stream(response):
            await send({"type": "http.response.start", "status": response.status, "headers": [(b"content-type", kind)]})
            async for data in relayed(response):
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            data = await response.read()
            response.release()
            headers = [(b"content-type", kind), (b"content-length", b"%d" % len(data))]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": data})

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await forward(receive, send)

    return app


def litestar_app(upstream: Upstream) -> Any:
    from litestar import Litestar, Request, Response, get, post
    from litestar.response import Stream

    @get("/health")
    async def health() -> str:
        return "ok"

    @post("/v1/chat/completions")
    async def chat(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        response = await upstream.post(await request.body())
        if not is_stream(response):
            data = await response.read()
            response.release()
            return Response(content=data, status_code=response.status, media_type="application/json")
        return Stream(relayed(response), status_code=response.status, media_type="text/event-stream")

    hints = {"Request": Request, "Response": Response, "Stream": Stream}  # imported here: the ASGI one needs none
    return Litestar([health, chat], on_startup=[upstream.start], on_shutdown=[upstream.stop], signature_namespace=hints)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--framework", choices=("asgi", "litestar"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    upstream = Upstream(args.upstream)
    app = asgi_app(upstream) if args.framework == "asgi" else litestar_app(upstream)
    gc.collect()
    gc.freeze()  # as `konsilium serve` does
    uvicorn.run(app, host=args.host, port=args.port, http="httptools", access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
