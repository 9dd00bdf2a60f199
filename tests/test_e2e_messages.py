"""Anthropic's Messages API on the real SmolLM2 through a real Konsilium process, driven by the
official anthropic SDK (and httpx for the raw stream and Anthropic's error bodies)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.servers import MODEL_ID, Server
from tests.test_e2e_responses import named_events

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}


@pytest.fixture
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk


def test_create_message(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model=MODEL_ID, max_tokens=16, system=[{"type": "text", "text": "Be brief."}], messages=HELLO,  # type: ignore[list-item]
        stop_sequences=["\n\n\n"], extra_body={"temperature": 0, "top_k": 20},
    )  # fmt: skip
    assert raw.headers["x-konsilium-model"] == MODEL_ID
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL_ID)
    [block] = message.content
    assert block.type == "text"
    assert block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 5
    assert 0 < message.usage.output_tokens <= 16


def test_stream_sends_anthropic_events_in_order(server: Server, claude: anthropic.Anthropic) -> None:
    body = {"model": MODEL_ID, "max_tokens": 12, "messages": HELLO, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.v1}/messages", json=body, headers=HEADERS, timeout=120) as response:
        assert response.status_code == 200, response.read()
        events = named_events(response)
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert names == [
        "message_start", "ping", "content_block_start", *["content_block_delta"] * len(deltas),
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["model"]) == ([], None, MODEL_ID)
    assert dict(events)["content_block_start"] == {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}
    }  # fmt: skip
    assert {d["type"] for d in deltas} == {"text_delta"}
    ending = dict(events)["message_delta"]
    assert ending["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert 0 < ending["usage"]["output_tokens"] <= 12

    # the same request through the SDK's stream helper: its final message is the streamed text
    with claude.messages.stream(model=MODEL_ID, max_tokens=12, messages=HELLO, extra_body={"temperature": 0}) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(d["text"] for d in deltas)
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.usage.output_tokens == ending["usage"]["output_tokens"]


def test_tool_use_round_trip(claude: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    with claude.messages.stream(
        model=MODEL_ID, max_tokens=40, messages=ask, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:  # fmt: skip
        call = stream.get_final_message()
    assert call.stop_reason == "tool_use"
    [use] = call.content
    assert use.type == "tool_use"
    assert use.name == "get_weather"
    assert isinstance(use.input, dict)
    assert use.input["city"]
    answer = claude.messages.create(
        model=MODEL_ID,
        max_tokens=24,
        extra_body={"temperature": 0},  # greedy: a sampled answer may call the tool again
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *ask,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C."}]},
        ],
    )
    assert answer.content[0].type == "text"
    assert answer.content[0].text
    assert answer.usage.input_tokens > call.usage.input_tokens


def test_errors_come_in_anthropic_shape(claude: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=HELLO)  # type: ignore[arg-type]
    assert unknown.value.body == {
        "type": "error", "error": {"type": "not_found_error", "message": "The model 'no-such-model' does not exist."}
    }  # fmt: skip
    missing = httpx.post(f"{server.v1}/messages", json={"model": MODEL_ID, "messages": HELLO}, headers=HEADERS)
    no_max = {"type": "invalid_request_error", "message": "Missing required parameter: 'max_tokens'."}
    assert (missing.status_code, missing.json()) == (400, {"type": "error", "error": no_max})
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=MODEL_ID, max_tokens=4, messages=[{"role": "user", "content": [image]}])  # type: ignore[list-item]
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    wrong_route = httpx.get(f"{server.v1}/messages", headers=HEADERS)
    assert wrong_route.status_code == 405
    assert wrong_route.json()["type"] == "error"


def test_claude_code_shaped_request_is_answered(server: Server) -> None:
    """What Claude Code sends: system blocks with cache_control, thinking blocks in history,
    its own tools beside an Anthropic-defined one, metadata, beta headers."""
    body = {
        "model": MODEL_ID,
        "max_tokens": 16,
        "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "...", "signature": "s"},
                    {"type": "text", "text": "Hello."},
                ],
            },
            {"role": "user", "content": "Say hello again."},
        ],
        "tools": [{**WEATHER, "name": "Bash"}, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "metadata": {"user_id": "user_abc"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    headers = {**HEADERS, "anthropic-beta": "interleaved-thinking-2025-05-14"}
    with httpx.stream("POST", f"{server.v1}/messages", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        events = named_events(response)
    assert events[-1] == ("message_stop", {"type": "message_stop"})


def test_count_tokens_is_the_models_own_count(claude: anthropic.Anthropic) -> None:
    """A llama.cpp model's tokenizer counts: exactly the prompt tokens its answer reports."""
    counted = claude.messages.count_tokens(model=MODEL_ID, messages=HELLO)  # type: ignore[arg-type]
    answered = claude.messages.create(model=MODEL_ID, max_tokens=1, messages=HELLO)  # type: ignore[arg-type]
    assert counted.input_tokens == answered.usage.input_tokens > 5
    assert json.loads(counted.model_dump_json()) == {"input_tokens": counted.input_tokens}
    longer = claude.messages.count_tokens(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Say hello. " * 50}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert longer.input_tokens > counted.input_tokens + 100
    routed = claude.messages.count_tokens(model="auto", messages=HELLO)  # type: ignore[arg-type]
    assert 0 < routed.input_tokens < counted.input_tokens  # the estimate: no template known before routing
