"""OpenAI's Responses API on the real SmolLM2 through a real Konsilium process, driven by the
official openai SDK (and httpx for the raw stream): every body and every event validated
against OpenAI's published schemas (tests/data/openai/)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.openapi import assert_valid
from tests.servers import MODEL_ID, Server

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}
# Codex CLI's request, as it sends it (CLIENTS.md): developer and user items with `input_text`
# parts, flat function tools next to a hosted one, no max_output_tokens, store off, streaming
CODEX = {
    "model": MODEL_ID,
    "instructions": "You are Codex, a coding agent. Answer briefly.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "cwd: /work"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]},
    ],
    "tools": [
        {**WEATHER, "name": "shell", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}},
        {"type": "web_search"},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": [],
    "prompt_cache_key": "0199b1c2-codex-session",
    "temperature": 0,
}

HOSTED, IMAGE, BAD_SCHEMA = (
    {"type": "web_search_preview"},
    {"type": "input_image", "image_url": "x"},
    {"type": "nonsense"},
)


def named_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """The raw stream as (event name, data) pairs: each `data:` line parsed alone."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            assert name is not None, "a data line without its event line"
            events.append((name, json.loads(line[len("data: ") :])))
            name = None
        else:
            assert line == "" or line.startswith(":"), f"unexpected SSE line {line!r}"
    return events


def stream(server: Server, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream("POST", f"{server.v1}/responses", json={**body, "stream": True}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-konsilium-model"] == MODEL_ID
        events = named_events(response)
    for name, data in events:
        assert name == data["type"]
        assert_valid("ResponseStreamEvent", data)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return events


def test_non_streaming_response(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL_ID, input="Say hello.", instructions="Be brief.", max_output_tokens=16, temperature=0,
        metadata={"ticket": "K-15"},
    )  # fmt: skip
    assert raw.headers["x-konsilium-model"] == MODEL_ID
    body = json.loads(raw.content)
    assert_valid("Response", body)
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert (response.model, response.instructions, response.metadata) == (MODEL_ID, "Be brief.", {"ticket": "K-15"})
    [message] = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert response.output_text
    assert response.usage is not None
    assert response.usage.input_tokens > 5
    assert 0 < response.usage.output_tokens <= 16
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"


def test_stream_emits_the_whole_lifecycle_in_order(server: Server) -> None:
    events = stream(server, {"model": MODEL_ID, "input": "Say hello.", "max_output_tokens": 12, "temperature": 0})
    names = [name for name, _ in events]
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert deltas
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        names[-1],
    ]
    final = events[-1][1]["response"]
    assert names[-1] == ("response.incomplete" if final["status"] == "incomplete" else "response.completed")
    assert_valid("Response", final)
    text = "".join(deltas)
    assert dict(events)["response.output_text.done"]["text"] == text
    assert final["output"][0]["content"][0]["text"] == text
    assert dict(events)["response.output_item.done"]["item"] == final["output"][0]
    assert final["usage"]["output_tokens"] <= 12


def test_sdk_stream_helper_builds_the_final_response(client: openai.OpenAI) -> None:
    # room to finish: the SDK's helper wants `response.completed` (a cut answer ends `incomplete`)
    with client.responses.stream(model=MODEL_ID, input="Say hello.", max_output_tokens=200, temperature=0) as events:
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        final = events.get_final_response()
    assert final.output_text == "".join(deltas) != ""


def test_codex_request_receives_response_completed(server: Server) -> None:
    events = stream(server, CODEX)
    name, data = events[-1]
    assert name == "response.completed", data
    assert data["response"]["status"] == "completed"
    assert data["response"]["store"] is False
    assert data["response"]["usage"]["total_tokens"] > 0


def test_function_call_round_trip_and_continuation(client: openai.OpenAI, server: Server) -> None:
    """A forced call streams as a function_call item; its output goes back by
    `previous_response_id`, and the stored conversation is what the follow-up continues."""
    ask = {"model": MODEL_ID, "input": "What is the weather in Paris?", "tools": [WEATHER], "temperature": 0}
    events = stream(
        server, {**ask, "tool_choice": {"type": "function", "name": "get_weather"}, "max_output_tokens": 40}
    )
    names = [name for name, _ in events]
    assert "response.function_call_arguments.delta" in names
    call = dict(events)["response.output_item.done"]["item"]
    assert (call["type"], call["name"], call["status"]) == ("function_call", "get_weather", "completed")
    assert json.loads(call["arguments"])["city"]
    assert dict(events)["response.function_call_arguments.done"]["arguments"] == call["arguments"]
    first = events[-1][1]["response"]
    assert first["output"] == [call]

    follow = client.responses.create(
        model=MODEL_ID,
        previous_response_id=first["id"],
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": '{"sky": "clear"}'}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=24,
        temperature=0,
    )
    assert follow.previous_response_id == first["id"]
    assert follow.output_text
    # the follow-up's prompt holds the first question and the call: larger than its own input alone
    alone = client.responses.create(
        model=MODEL_ID,
        input='{"sky": "clear"}',
        tools=[WEATHER],
        max_output_tokens=1,
        temperature=0,  # type: ignore[list-item]
    )
    assert follow.usage is not None
    assert alone.usage is not None
    assert follow.usage.input_tokens > alone.usage.input_tokens + 10


def test_stored_responses_are_retrieved_and_deleted(client: openai.OpenAI) -> None:
    made = client.responses.create(model=MODEL_ID, input="Say hello.", max_output_tokens=4, temperature=0)
    fetched = client.responses.retrieve(made.id)
    assert fetched.model_dump() == made.model_dump()
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(made.id)
    assert gone.value.body == {
        "message": f"No response with id '{made.id}' found.", "type": "invalid_request_error",
        "param": "response_id", "code": "not_found",
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(model=MODEL_ID, input="again", previous_response_id=made.id, max_output_tokens=4)
    assert isinstance(unknown.value.body, dict)
    assert unknown.value.body["param"] == "previous_response_id"


def test_unstored_responses_cannot_be_continued(client: openai.OpenAI) -> None:
    made = client.responses.create(model=MODEL_ID, input="Say hello.", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"tools": [{"type": "teleport", "name": "x"}]}, 400, "tools[0].type"),
        ({"tools": [{"type": "function", "name": "bad name!"}]}, 400, "tools[0].name"),
        ({"tool_choice": {"type": "web_search_preview"}, "tools": [HOSTED]}, 400, "tool_choice.type"),
        ({"input": [{"type": "message", "role": "user", "content": [IMAGE]}]}, 400, "input[0].content"),
        ({"input": [{"type": "hologram"}]}, 400, "input[0].type"),
        ({"input": [{"type": "function_call", "name": "f"}]}, 400, "input[0].call_id"),
        ({"input": [{"type": "reasoning", "summary": []}]}, 400, "input"),
        ({"max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": BAD_SCHEMA}}}, 400, "text.format.schema"),
        ({"model": "no-such-model"}, 404, "model"),
    ],
)  # fmt: skip
def test_bad_requests_are_clear_errors(server: Server, fields: dict[str, Any], status: int, param: str) -> None:
    body = {"model": MODEL_ID, "input": "hi", "max_output_tokens": 4, **fields}
    response = httpx.post(f"{server.v1}/responses", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param


def test_cursor_agent_body_on_chat_completions_is_answered(server: Server) -> None:
    """Cursor's Agent posts Responses-shaped bodies to chat and reads chat chunks back."""
    body = {
        "model": MODEL_ID,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}],
        "tools": [{"type": "function", "name": "read_file", "parameters": {"type": "object", "properties": {}}}],
        "reasoning": {"effort": "low"},
        "max_tokens": 8,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
