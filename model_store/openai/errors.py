"""Translate what an upstream server or aiohttp throws into the gateway's error tree.

Every `aiohttp.ClientError` subclass (and the `TimeoutError`s its timeouts raise) maps to a
`GatewayError` — a test walks the whole hierarchy, as httpx's own `map_httpcore_exceptions`
test does — and every upstream error body — OpenAI's
`{"error": {...}}`, vLLM's `{"object": "error", "code": 400, "type": "BadRequestError"}`, or
plain text — becomes OpenAI's shape with a string code.
"""

from __future__ import annotations

import aiohttp
import msgspec

from konsilium.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    RateLimitError,
)

MAX_MESSAGE = 500


class UpstreamError(msgspec.Struct):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class _OpenAIErrorBody(msgspec.Struct):
    error: UpstreamError | str


_openai_body = msgspec.json.Decoder(_OpenAIErrorBody)
_flat_body = msgspec.json.Decoder(UpstreamError)


def translate_transport_error(exc: aiohttp.ClientError | TimeoutError, upstream: str) -> GatewayError:
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return BackendUnavailableError(f"upstream {upstream} is unreachable: {_describe(exc)}", retry_after=1)
    if isinstance(exc, TimeoutError):
        return BackendTimeoutError(f"upstream {upstream} timed out: {_describe(exc)}")
    return BackendError(f"upstream {upstream} failed: {_describe(exc)}")


def translate_status(status: int, body: bytes, retry_after: str | None, upstream: str) -> GatewayError:
    """An upstream 4xx that blames the request stays a 4xx; anything about us becomes a 5xx."""
    detail = parse_error_body(body)
    message = f"upstream {upstream} answered {status}: {detail.message}"
    code = detail.code if isinstance(detail.code, str) else None
    if status == 429:
        return RateLimitError(message, retry_after=_seconds(retry_after))
    if code == "context_length_exceeded":
        return ContextLengthExceededError(message, param=detail.param or "messages")
    if status in (400, 413, 422):
        return InvalidRequestError(message, param=detail.param, code=code)
    if status in (401, 403):
        return BackendError(f"upstream {upstream} rejected the gateway's credentials ({status})")
    return BackendError(message)


def parse_error_body(body: bytes) -> UpstreamError:
    try:
        error = _openai_body.decode(body).error
        return UpstreamError(message=error) if isinstance(error, str) else _clip(error)
    except msgspec.DecodeError:
        pass
    try:
        return _clip(_flat_body.decode(body))
    except msgspec.DecodeError:
        return UpstreamError(message=body.decode("utf-8", errors="replace")[:MAX_MESSAGE] or "no body")


def _clip(error: UpstreamError) -> UpstreamError:
    return msgspec.structs.replace(error, message=error.message[:MAX_MESSAGE])


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _seconds(value: str | None) -> int:
    try:
        return max(1, min(int(float(value or 1)), 120))
    except ValueError:
        return 1
