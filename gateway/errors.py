"""One renderer for every failure: `{"error": {message, type, param, code}}`, never a traceback.

Framework errors (unknown route, wrong method, body too large), msgspec's decode errors and
anything unexpected are first translated into the `GatewayError` tree, then rendered the same way.
"""

from __future__ import annotations

import logging
import re
from typing import Any

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

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
_HTTP: dict[int, type[GatewayError]] = {
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: RequestTooLargeError,
}


def from_decode_error(exc: msgspec.DecodeError) -> InvalidRequestError:
    """msgspec says `Expected `int`, got `str` - at `$.max_tokens``; `param` is that path. A
    missing field is named too: `Object missing required field `messages`` is `messages`."""
    message = str(exc)
    match = _PATH.search(message)
    detail, path = (message[: match.start()], match.group("path")) if match else (message, "")
    missing = _MISSING.match(detail)
    if missing is not None:
        param = f"{path}.{missing.group('field')}" if path else missing.group("field")
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    if not path:
        return InvalidRequestError(f"Could not parse the request body: {detail}")
    return InvalidRequestError(f"Invalid value for '{path}': {detail}", param=path)


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


def error_headers(error: GatewayError) -> dict[str, str]:
    return {"retry-after": str(error.retry_after)} if error.retry_after is not None else {}


def render(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    error = to_gateway_error(exc)
    return Response(
        content=p.encoder.encode(error_object(error)),
        status_code=error.status,
        media_type="application/json",
        headers=error_headers(error),
    )
