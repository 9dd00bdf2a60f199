"""Every client mistake is a clear OpenAI-shaped 4xx (never a 500), checked through the real server."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.openapi import assert_valid
from tests.servers import MODEL_ID, Server

pytestmark = pytest.mark.e2e

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def post(server: Server, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.v1}{path}", timeout=60, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert_valid("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("content", "param", "fragment"),
    [
        (b"{not json", None, "malformed"),
        (b"[]", None, "Expected `object`"),
        (b'{"model": "m", "messages": "hi"}', "messages", "Expected `array`"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}',
            "max_tokens",
            "Expected `int | null`, got `str`",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens", ">= 1"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}', "top_p", "<= 1.0"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role", "robot"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(server: Server, content: bytes, param: str | None, fragment: str) -> None:
    error = error_of(
        post(server, "/chat/completions", content=content, headers={"content-type": "application/json"}), 400
    )
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert fragment in error["message"]


def test_unknown_model_is_404_model_not_found(server: Server) -> None:
    error = error_of(post(server, "/chat/completions", json={"model": "gpt-9", "messages": OK_MESSAGES}), 404)
    assert error == {"message": "The model 'gpt-9' does not exist.", "type": "invalid_request_error",
                     "param": "model", "code": "model_not_found"}  # fmt: skip
    assert error_of(httpx.get(f"{server.v1}/models/gpt-9"), 404)["code"] == "model_not_found"


def test_sdk_raises_its_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=OK_MESSAGES)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL_ID, messages=OK_MESSAGES, n=3)  # type: ignore[arg-type]
    assert (bad.value.code, bad.value.param) == ("unsupported_parameter", "n")


def test_prompt_longer_than_the_context_is_context_length_exceeded(server: Server) -> None:
    long_text = "word " * 3000  # the test server runs SmolLM2 with n_ctx 2048
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": long_text}]}
    error = error_of(post(server, "/chat/completions", json=body), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "2048" in error["message"]
    streamed = error_of(post(server, "/chat/completions", json={**body, "stream": True}), 400)
    assert streamed["code"] == "context_length_exceeded"
    error = error_of(post(server, "/completions", json={"model": MODEL_ID, "prompt": long_text}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")


def test_unknown_tool_in_tool_choice_is_400(server: Server) -> None:
    body = {"model": MODEL_ID, "messages": OK_MESSAGES, "tools": [{"type": "function", "function": {"name": "a"}}],
            "tool_choice": {"type": "function", "function": {"name": "b"}}}  # fmt: skip
    assert error_of(post(server, "/chat/completions", json=body), 400)["param"] == "tool_choice"


def test_unknown_route_and_wrong_method(server: Server) -> None:
    assert error_of(httpx.get(f"{server.v1}/nothing-here"), 404)["code"] == "not_found"
    assert error_of(httpx.get(f"{server.v1}/chat/completions"), 405)["code"] == "method_not_allowed"


def test_body_size_is_bounded(server: Server) -> None:
    huge = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * (9 * 1024 * 1024) + b'"}]}'
    error = error_of(post(server, "/chat/completions", content=huge, headers={"content-type": "application/json"}), 413)
    assert error["code"] == "request_too_large"


def test_the_server_is_still_healthy_after_all_that(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model=MODEL_ID, messages=OK_MESSAGES, max_tokens=3).choices  # type: ignore[arg-type]
