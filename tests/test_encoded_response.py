"""`JsonResponse` sends what Litestar's `Response` would: its status, the body as given, the
content type and length, the answer's headers over the route's."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from litestar import Request

from gateway.encoded import JsonResponse

BODY = '{"answer":"Привет"}'.encode()


def _sent(response: JsonResponse, **kwargs: Any) -> list[dict[str, Any]]:
    asgi = response.to_asgi_response(None, cast("Request[Any, Any, Any]", None), **kwargs)
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(message)

    async def receive() -> Any:
        raise AssertionError("an answer reads nothing")

    asyncio.run(asgi({"type": "http"}, receive, send))  # type: ignore[arg-type]
    return messages


def test_the_head_and_body_are_sent_as_litestar_would() -> None:
    response = JsonResponse(BODY, {"X-Konsilium-Model": "m", "x-request-id": "r1"}, status_code=201)
    start, body = _sent(response, headers={"X-Request-Id": "from-the-route", "x-route": "1"})
    assert start == {
        "type": "http.response.start",
        "status": 201,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"x-request-id", b"r1"),
            (b"x-route", b"1"),
            (b"x-konsilium-model", b"m"),
        ],
    }
    assert body == {"type": "http.response.body", "body": BODY, "more_body": False}


def test_a_head_request_gets_no_body() -> None:
    _, body = _sent(JsonResponse(BODY), is_head_response=True)
    assert body == {"type": "http.response.body", "body": b"", "more_body": False}
