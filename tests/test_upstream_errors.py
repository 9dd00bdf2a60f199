"""Every foreign failure an upstream can cause becomes an OpenAI-shaped GatewayError."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from konsilium.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    RateLimitError,
)
from model_store.openai.errors import parse_error_body, translate_status, translate_transport_error


def _subclasses(cls: type[aiohttp.ClientError]) -> list[type[aiohttp.ClientError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return list(dict.fromkeys(found))


KEY = ConnectionKey("127.0.0.1", 9, False, True, None, None, None)
REQUEST = aiohttp.RequestInfo(URL("http://127.0.0.1:9/v1"), "POST", CIMultiDictProxy(CIMultiDict()))


def _instance(cls: type[aiohttp.ClientError]) -> aiohttp.ClientError:
    """Each class built the way aiohttp itself raises it."""
    if issubclass(cls, UnixClientConnectorError):
        return cls("/run/upstream.sock", KEY, OSError(2, "No such file"))
    if issubclass(cls, aiohttp.ClientConnectorCertificateError):
        return cls(KEY, ValueError("bad certificate"))
    if issubclass(cls, aiohttp.ClientConnectorError):
        return cls(KEY, OSError(111, "Connection refused"))
    if issubclass(cls, aiohttp.ClientResponseError):
        return cls(REQUEST, (), status=500, message="boom")
    if issubclass(cls, aiohttp.ServerFingerprintMismatch):
        return cls(b"a", b"b", "127.0.0.1", 9)
    return cls("boom")


ALL_AIOHTTP_ERRORS = _subclasses(aiohttp.ClientError)


def test_the_walk_finds_the_whole_aiohttp_hierarchy() -> None:
    expected = {aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.SocketTimeoutError,
                aiohttp.ClientPayloadError, aiohttp.ClientResponseError}  # fmt: skip
    assert expected <= set(ALL_AIOHTTP_ERRORS)


@pytest.mark.parametrize("cls", ALL_AIOHTTP_ERRORS, ids=lambda c: c.__name__)
def test_every_aiohttp_error_is_translated(cls: type[aiohttp.ClientError]) -> None:
    error = translate_transport_error(_instance(cls), "http://127.0.0.1:9/v1")
    assert isinstance(error, GatewayError)
    assert error.status >= 500
    assert error.error_type == "server_error"
    assert "http://127.0.0.1:9/v1" in error.message


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_instance(aiohttp.ClientConnectorError), BackendUnavailableError),
        (aiohttp.ConnectionTimeoutError("connect"), BackendUnavailableError),
        (aiohttp.SocketTimeoutError("read"), BackendTimeoutError),
        (TimeoutError(), BackendTimeoutError),
        (aiohttp.ServerDisconnectedError(), BackendError),
        (aiohttp.ClientPayloadError("truncated"), BackendError),
    ],
    ids=lambda x: type(x).__name__,
)
def test_transport_errors_map_to_statuses(
    exc: aiohttp.ClientError | TimeoutError, expected: type[GatewayError]
) -> None:
    assert type(translate_transport_error(exc, "u")) is expected


VLLM_BODY = (
    b'{"object":"error","message":"maximum context length is 2048","type":"BadRequestError","param":null,"code":400}'
)
OPENAI_CONTEXT = (
    b'{"error":{"message":"too long","type":"invalid_request_error","param":"messages",'
    b'"code":"context_length_exceeded"}}'
)


@pytest.mark.parametrize(
    ("status", "body", "expected", "code", "http"),
    [
        (400, VLLM_BODY, InvalidRequestError, "invalid_request", 400),
        (400, OPENAI_CONTEXT, ContextLengthExceededError, "context_length_exceeded", 400),
        (
            404,
            b'{"error":{"message":"no such model","type":"x","param":null,"code":"model_not_found"}}',
            BackendError,
            "backend_error",
            502,
        ),
        (401, b'{"error":"bad key"}', BackendError, "backend_error", 502),
        (429, b"slow down", RateLimitError, "rate_limit_exceeded", 429),
        (500, b"<html>oops</html>", BackendError, "backend_error", 502),
        (503, b"", BackendError, "backend_error", 502),
    ],
)
def test_upstream_statuses(status: int, body: bytes, expected: type[GatewayError], code: str, http: int) -> None:
    error = translate_status(status, body, "7", "U")
    assert type(error) is expected
    assert (error.code, error.status) == (code, http)


def test_retry_after_is_kept_for_rate_limits() -> None:
    assert translate_status(429, b"", "7", "U").retry_after == 7


def test_credentials_problems_never_look_like_the_clients_key() -> None:
    error = translate_status(401, b'{"error":{"message":"Incorrect API key sk-abc"}}', None, "U")
    assert error.status == 502
    assert "sk-abc" not in error.message


def test_vllm_integer_codes_are_not_passed_as_codes() -> None:
    parsed = parse_error_body(VLLM_BODY)
    assert (parsed.message, parsed.code) == ("maximum context length is 2048", 400)
    assert translate_status(400, VLLM_BODY, None, "U").code == "invalid_request"
