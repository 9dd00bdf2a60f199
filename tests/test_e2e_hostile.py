"""Hostile and unlucky input through a real Konsilium serving the real SmolLM2 (issue 19's list):
each request gets the status a client's mistake deserves, and the model stays available — the
same worker process (pid) answers the next client. Headers, URLs and the admin guard behind
proxies are in `test_http_limits.py`; the fuzzing in `test_fuzz.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.openapi import assert_valid
from tests.servers import MODEL_ID, Server, free_port, llama_model, run_server

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "hi"}]


def post(server: Server, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.v1}{path}", json=body, timeout=120, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert_valid("ErrorResponse", body)
    return body["error"]


def still_serving(server: Server, pid: object) -> None:
    """The next client is answered by the same worker: nothing crashed, nothing was closed."""
    reply = post(server, "/chat/completions", {"model": MODEL_ID, "messages": HI, "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert server.model_state()["pid"] == pid


def nesting(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "raw",
    [
        f'{{"model": "{MODEL_ID}", "messages": [{{"role": "user", "content": "x"}}], "max_tokens": 2, "x": '
        f"{nesting(1000)}}}",
        f'{{"model": "{MODEL_ID}", "messages": [{{"role": "user", "content": "x"}}], "response_format": '
        f'{{"type": "json_schema", "json_schema": {{"name": "n", "schema": {{"a": {nesting(5000)}}}}}}}}}',
    ],
    ids=["unknown-field", "inside-a-schema"],
)
def test_1_deeply_nested_json_is_a_400(server: Server, raw: str) -> None:
    pid = server.model_state()["pid"]
    response = post(server, "/chat/completions", content=raw.encode(), headers={"content-type": "application/json"})
    assert error_of(response, 400) == {
        "message": "The request body is nested too deeply to parse.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    still_serving(server, pid)


def test_1_a_deep_schema_the_parser_accepts_is_refused_by_its_bounds(server: Server) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    error = error_of(
        post(server, "/chat/completions", {"model": MODEL_ID, "messages": HI, "response_format": fmt}), 400
    )
    assert (error["param"], error["message"]) == (
        "response_format.json_schema.schema",
        "Invalid JSON schema: it is nested deeper than 64 levels",
    )


@pytest.mark.parametrize("prompt", ["", [""]])
@pytest.mark.parametrize("stream", [False, True])
def test_2_an_empty_completion_prompt_is_answered(server: Server, prompt: object, stream: bool) -> None:
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": stream}
    response = post(server, "/completions", body)
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.endswith("data: [DONE]\n\n")
        assert '"finish_reason":' in response.text
    else:
        assert_valid("CreateCompletionResponse", response.json())
        assert response.json()["usage"]["prompt_tokens"] == 1  # the beginning-of-document token


@pytest.mark.parametrize(
    ("schema", "outcome"),
    [
        ({"type": "string", "maxLength": 2000}, 200),  # the bound is left to max_tokens
        ({"type": "array", "items": {"type": "integer"}, "minItems": 100_000}, 400),  # cannot be unrolled
    ],
)
def test_4_no_json_schema_takes_the_worker_down(server: Server, schema: dict[str, Any], outcome: int) -> None:
    pid = server.model_state()["pid"]
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    body = {"model": MODEL_ID, "messages": HI, "max_tokens": 8, "temperature": 0, "response_format": fmt}
    response = post(server, "/chat/completions", body)
    if outcome == 400:
        error = error_of(response, 400)
        assert (error["param"], error["code"]) == ("response_format.json_schema.schema", "invalid_request")
        assert "minItems 100000 is over 256" in error["message"]
    else:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"].startswith('"')
    still_serving(server, pid)


def test_4_the_same_through_a_required_tool_call_names_the_tool(server: Server) -> None:
    pid = server.model_state()["pid"]
    parameters = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"},
                                                          "minItems": 100_000}}}  # fmt: skip
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    body = {"model": MODEL_ID, "messages": HI, "max_tokens": 8, "tools": tools, "tool_choice": "required"}
    error = error_of(post(server, "/chat/completions", body), 400)
    assert error["param"] == "tools[0].function.parameters"
    still_serving(server, pid)


def test_5_an_answer_whose_first_event_is_the_finish_is_an_empty_message(server: Server) -> None:
    messages = [{"role": "assistant", "content": ""}, {"role": "assistant", "content": ""}]
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": 8, "temperature": 0}
    streamed = post(server, "/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
    reply = post(server, "/chat/completions", body)
    assert reply.status_code == 200, reply.text
    assert_valid("CreateChatCompletionResponse", reply.json())
    choice = reply.json()["choices"][0]
    usage = reply.json()["usage"]
    # the same request, either way: what the stream carried is what the JSON says
    assert f'"completion_tokens":{usage["completion_tokens"]}' in streamed.text
    assert choice["finish_reason"] == "stop"


def test_6_many_messages_do_not_freeze_the_gateway(server: Server) -> None:
    messages = [{"role": "user", "content": "x"}] * 9_000  # under the cap, far over the context
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": 2}

    async def both() -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient(timeout=120) as http:
            request = asyncio.create_task(http.post(f"{server.v1}/chat/completions", json=body))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            health = await http.get(f"{server.base_url}/health")
            assert health.status_code == 200
            return await request, time.monotonic() - started

    reply, _ = asyncio.run(both())
    error = error_of(reply, 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    too_many = error_of(post(server, "/chat/completions", {**body, "messages": messages * 5}), 400)
    assert too_many["param"] == "messages"
    assert "length <= 10000" in too_many["message"]


@pytest.mark.parametrize(
    "parameters",
    [{"type": "objekt"}, {"type": 12}, {"properties": "nope"}, {"$ref": "#/definitions/missing"},
     {"type": "object", "required": "a"}],
)  # fmt: skip
def test_7_tool_parameter_schemas_are_validated(server: Server, parameters: dict[str, Any]) -> None:
    tools = [
        {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "bad", "parameters": parameters}},
    ]
    body = {"model": MODEL_ID, "messages": HI, "max_tokens": 2, "tools": tools, "tool_choice": "auto"}
    error = error_of(post(server, "/chat/completions", body), 400)
    assert (error["param"], error["code"]) == ("tools[1].function.parameters", "invalid_request")
    assert error["message"].startswith("Invalid JSON schema: ")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One model, no fallback, a breaker that opens after two strikes and a first-event timeout
    far below the time a queued request waits."""
    routing = {"local_timeout_ms": 1000, "breaker_failures": 2, "breaker_cooldown_s": 600}
    with run_server(tmp_path_factory.mktemp("strict"), [llama_model(max_queue=4)], routing=routing) as running:
        yield running


def breaker(server: Server) -> str:
    models = httpx.get(f"{server.base_url}/admin/models").json()["models"]
    state: str = next(m for m in models if m["id"] == MODEL_ID)["breaker"]
    return state


def test_3_a_clients_failing_requests_do_not_close_the_model_to_others(strict: Server) -> None:
    # valid JSON Schema, but llama.cpp cannot build a grammar of a `"` inside an `enum`: the
    # worker refuses this one request (and carries on)
    parameters = {"type": "object", "properties": {"a": {"enum": ['x"y']}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    refused = {"model": MODEL_ID, "messages": HI, "max_tokens": 1, "tools": tools, "tool_choice": "required"}
    for _ in range(3):
        error = error_of(post(strict, "/chat/completions", refused), 400)
        assert (error["message"], error["param"]) == (
            "this JSON schema cannot be compiled into a grammar for this model",
            "tools[0].function.parameters",
        )
    assert breaker(strict) == "closed"
    reply = post(strict, "/chat/completions", {"model": MODEL_ID, "messages": HI, "max_tokens": 2})
    assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The model has a fallback behind it (an upstream nobody listens on), so its first-event
    timeout applies — and a queued request that timed out would fall back and fail."""
    spare = {"id": "spare", "format": "remote", "url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 2}
    routing = {
        "local_timeout_ms": 3000,
        "breaker_failures": 2,
        "breaker_cooldown_s": 600,
        "roles": {"dev": {"targets": [{"model": MODEL_ID}, {"model": "spare"}]}},
    }
    models = [llama_model(max_queue=4), spare]
    with run_server(tmp_path_factory.mktemp("queued"), models, routing=routing) as running:
        yield running


def test_10_requests_queued_for_a_busy_model_wait_their_turn(queued: Server) -> None:
    strict = queued
    body = {"model": "auto", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 200, "temperature": 0, "stream": True}

    async def four() -> list[tuple[int, str, float]]:
        async with httpx.AsyncClient(timeout=180) as http:
            started = time.monotonic()

            async def one() -> tuple[int, str, float]:
                response = await http.post(f"{strict.v1}/completions", json=body)
                return response.status_code, response.text, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(4)))

    answers = asyncio.run(four())
    assert [status for status, _, _ in answers] == [200] * 4, answers[0][1]
    assert all('"error"' not in text and text.endswith("data: [DONE]\n\n") for _, text, _ in answers)
    assert all(f'"model":"{MODEL_ID}"' in text for _, text, _ in answers), "no fallback was needed"
    # the premise: the last one waited in the queue for longer than the first-event timeout
    assert max(seconds for _, _, seconds in answers) > 3.0
    assert breaker(strict) == "closed"
