"""One renderer for every failure: `{"error": {message, type, param, code}}`, never a traceback.

Framework errors (unknown route, wrong method, body too large), msgspec's decode errors and
anything unexpected are first translated into the `GatewayError` tree, then rendered the same way.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from gateway import protocol as p
from konsilium.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
ANTHROPIC_PATHS = "/v1/messages"  # Anthropic's Messages API: its clients read its error shape
# Anthropic's error types by status (docs.anthropic.com/en/api/errors)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}  # fmt: skip

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
_HTTP: dict[int, type[GatewayError]] = {
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: RequestTooLargeError,
}


def from_decode_error(exc: msgspec.DecodeError, at: str = "") -> InvalidRequestError:
    """msgspec says `Expected `int`, got `str` - at `$.max_tokens``; `param` is that path (below
    `at`, for a part of the body converted on its own). A missing field is named too: `Object
    missing required field `messages`` is `messages`."""
    message = str(exc)
    match = _PATH.search(message)
    detail, path = (message[: match.start()], match.group("path")) if match else (message, "")
    path = _joined(at, path)
    missing = _MISSING.match(detail)
    if missing is not None:
        param = f"{path}.{missing.group('field')}" if path else missing.group("field")
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    if not path:
        return InvalidRequestError(f"Could not parse the request body: {detail}")
    return InvalidRequestError(f"Invalid value for '{path}': {detail}", param=path)


def _joined(at: str, path: str) -> str:
    if not at or not path:
        return at or path
    return at + path if path.startswith("[") else f"{at}.{path}"


def converted(obj: object, into: type[T], at: str) -> T:
    """`obj` (a part of the body kept as plain JSON) as `into`; a mismatch names its path below `at`."""
    try:
        return msgspec.convert(obj, into)
    except msgspec.ValidationError as exc:
        raise from_decode_error(exc, at) from exc


def too_deep() -> InvalidRequestError:
    """msgspec gives up on very deep nesting with a RecursionError: the client's mistake."""
    return InvalidRequestError("The request body is nested too deeply to parse.")


def to_gateway_error(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, msgspec.DecodeError):
        return from_decode_error(exc)
    if isinstance(exc, RecursionError):
        return too_deep()
    if isinstance(exc, HTTPException):
        error_class = _HTTP.get(exc.status_code, InvalidRequestError if exc.status_code < 500 else InternalError)
        return error_class(str(exc.detail))
    log.exception("unhandled error")
    return InternalError("The server had an error while processing your request.")


def error_object(error: GatewayError) -> p.ErrorResponse:
    return p.ErrorResponse(
        error=p.ErrorDetail(message=error.message, type=error.error_type, param=error.param, code=error.code)
    )


def anthropic_error(error: GatewayError) -> dict[str, object]:
    kind = _ANTHROPIC_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_body(path: str, error: GatewayError) -> bytes:
    """The error body the client at `path` reads: Anthropic's shape on its API, else OpenAI's."""
    if path.startswith(ANTHROPIC_PATHS):
        return p.encoder.encode(anthropic_error(error))
    return p.encoder.encode(error_object(error))


def error_headers(error: GatewayError) -> dict[str, str]:
    return {"retry-after": str(error.retry_after)} if error.retry_after is not None else {}


def render(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    error = to_gateway_error(exc)
    return Response(
        content=error_body(request.url.path, error),
        status_code=error.status,
        media_type="application/json",
        headers=error_headers(error),
    )
