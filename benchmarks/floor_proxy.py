"""The floor: a bare aiohttp pass-through, the least a Python gateway can do per request.

It forwards ``POST /v1/chat/completions`` to one upstream with a pooled aiohttp client and
relays the answer as it comes (a streamed answer chunk by chunk, as read), with no parsing, no
routing, no telemetry. ``benchmarks.bench_gateways`` measures Konsilium and LiteLLM against it:
what they cost beyond this is the price of what they do.

Run: ``python -m benchmarks.floor_proxy --port P --upstream http://127.0.0.1:U``; it serves
``GET /health`` once listening.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[_SESSION]
    url = request.app[_UPSTREAM] + "/v1/chat/completions"
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as upstream:
        content_type = upstream.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")
        response = web.StreamResponse(status=upstream.status, headers={"content-type": content_type})
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[_UPSTREAM] = upstream.rstrip("/")

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[_SESSION] = session
            yield

    app.cleanup_ctx.append(session_context)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
