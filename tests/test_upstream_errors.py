"""Every foreign failure an upstream can cause becomes an OpenAI-shaped GatewayError."""

from __future__ import annotations

import httpx
import pytest

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


def _subclasses(cls: type[httpx.HTTPError]) -> list[type[httpx.HTTPError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _instance(cls: type[httpx.HTTPError]) -> httpx.HTTPError:
    if issubclass(cls, httpx.HTTPStatusError):
        request = httpx.Request("GET", "http://127.0.0.1/")
        return cls("boom", request=request, response=httpx.Response(500, request=request))
    return cls("boom")


ALL_HTTPX_ERRORS = _subclasses(httpx.HTTPError)


def test_the_walk_finds_the_whole_httpx_hierarchy() -> None:
    assert {httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.HTTPStatusError} <= set(
        ALL_HTTPX_ERRORS
    )


@pytest.mark.parametrize("cls", ALL_HTTPX_ERRORS, ids=lambda c: c.__name__)
def test_every_httpx_error_is_translated(cls: type[httpx.HTTPError]) -> None:
    error = translate_transport_error(_instance(cls), "http://127.0.0.1:9/v1")
    assert isinstance(error, GatewayError)
    assert error.status >= 500
    assert error.error_type == "server_error"
    assert "http://127.0.0.1:9/v1" in error.message


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (httpx.ConnectError, BackendUnavailableError),
        (httpx.ConnectTimeout, BackendUnavailableError),
        (httpx.ReadTimeout, BackendTimeoutError),
        (httpx.PoolTimeout, BackendTimeoutError),
        (httpx.RemoteProtocolError, BackendError),
        (httpx.ReadError, BackendError),
    ],
)
def test_transport_errors_map_to_statuses(cls: type[httpx.HTTPError], expected: type[GatewayError]) -> None:
    assert type(translate_transport_error(cls("x"), "u")) is expected


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
