"""The real SmolLM2 through a real Konsilium process, driven by the official openai SDK.

Every body is validated against OpenAI's published schemas (tests/data/openai/).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.openapi import assert_valid
from tests.servers import MODEL_ID, Server

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello."}]


def sse_events(response: httpx.Response) -> list[Any]:
    """The raw stream: every `data:` line parsed alone (as Continue does), [DONE] kept as a string."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "" or line.startswith(":"), f"unexpected SSE line {line!r}"
    return events


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID,
        messages=HELLO,
        temperature=0,
        max_tokens=24,  # type: ignore[arg-type]
    )
    assert raw.headers["x-konsilium-model"] == MODEL_ID
    assert raw.headers["content-type"] == "application/json"
    body = json.loads(raw.content)
    assert_valid("CreateChatCompletionResponse", body)
    completion = raw.parse()
    choice = completion.choices[0]
    assert completion.model == MODEL_ID
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens <= 24
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    def ask() -> str | None:
        reply = client.chat.completions.create(model=MODEL_ID, messages=HELLO, temperature=0, max_tokens=16)  # type: ignore[arg-type]
        return reply.choices[0].message.content

    assert ask() == ask()


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str | None:
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=HELLO, temperature=1.5, max_tokens=24, seed=seed
        )  # type: ignore[arg-type]
        return reply.choices[0].message.content

    assert sample(-(2**40)) == sample(-(2**40))  # any int64 is accepted, as OpenAI does
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1, "different seeds should sample differently"


def test_stream_framing_is_openais(server: Server) -> None:
    body = {"model": MODEL_ID, "messages": HELLO, "temperature": 0, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-konsilium-model"] == MODEL_ID
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    usage_chunk, finish_chunk = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == []
    assert finish_chunk["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text
    assert usage_chunk["usage"]["completion_tokens"] <= 12
    assert (
        usage_chunk["usage"]["total_tokens"]
        == usage_chunk["usage"]["prompt_tokens"] + usage_chunk["usage"]["completion_tokens"]
    )


def test_stream_matches_non_stream(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL_ID, "messages": HELLO, "temperature": 0, "max_tokens": 20}
    whole = client.chat.completions.create(**args).choices[0].message.content
    pieces = [
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **args) if c.choices
    ]
    assert "".join(pieces) == whole


def test_without_include_usage_there_is_no_usage_chunk(server: Server) -> None:
    body = {"model": MODEL_ID, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert all(c["choices"] and "usage" not in c for c in events[:-1])


def test_max_tokens_is_honoured(client: openai.OpenAI) -> None:
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    for field in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(model=MODEL_ID, messages=story, temperature=0, **{field: 5})  # type: ignore[call-overload]
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 5


def test_stop_sequence_ends_the_answer(client: openai.OpenAI) -> None:
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    args: dict[str, Any] = {"model": MODEL_ID, "temperature": 0, "max_tokens": 40, "messages": count}
    free = client.chat.completions.create(**args).choices[0].message.content or ""
    assert "3" in free
    stopped = client.chat.completions.create(stop=["3"], **args).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == free[: free.index("3")]


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with name and age."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_json_schema_output_follows_the_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}  # fmt: skip
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "A cat called Tom, aged 3, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}},
        temperature=0,
        max_tokens=100,
    )
    parsed = json.loads(reply.choices[0].message.content or "")
    assert set(parsed) == {"name", "age"}
    assert isinstance(parsed["age"], int)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def only_tool_call(raw: Any) -> Any:
    """The one tool call of a raw chat answer, which must be valid, and nothing but that call."""
    assert_valid("CreateChatCompletionResponse", json.loads(raw.content))
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    return call


def test_forced_tool_call(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=WEATHER_ASK, tools=[WEATHER_TOOL], temperature=0, max_tokens=60,  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    call = only_tool_call(raw)
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=WEATHER_ASK, tools=[WEATHER_TOOL], tool_choice="required", temperature=0,  # type: ignore[list-item]
        max_tokens=60, stream=True,
    )  # fmt: skip
    deltas = [c.choices[0] for c in stream if c.choices]
    calls = [tc for d in deltas for tc in d.delta.tool_calls or []]
    assert calls[0].id
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert all(tc.index == 0 for tc in calls)
    assert not any(d.delta.content and d.delta.tool_calls for d in deltas), "content and tool_calls share a delta"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert "city" in json.loads(arguments)
    assert deltas[-1].finish_reason == "tool_calls"


def test_the_sdk_stream_helper_assembles_the_tool_call(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL_ID, messages=WEATHER_ASK, tools=[WEATHER_TOOL], tool_choice="required", temperature=0,  # type: ignore[list-item]
        max_tokens=60,
    ) as stream:  # fmt: skip
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]


def test_tool_result_conversation_is_accepted(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        *WEATHER_ASK,
        {"role": "assistant", "content": " ", "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]  # fmt: skip
    reply = client.chat.completions.create(  # greedy: a sampled answer may call the tool again
        model=MODEL_ID,
        messages=messages,
        tools=[WEATHER_TOOL],
        max_tokens=20,
        temperature=0,
        seed=1,  # type: ignore[list-item]
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].message.tool_calls is None


def test_text_completion(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert raw.headers["x-konsilium-model"] == MODEL_ID
    body = json.loads(raw.content)
    assert_valid("CreateCompletionResponse", body)
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 8


def test_text_completion_stream(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL_ID, "prompt": "def add(a, b):", "max_tokens": 16, "temperature": 0}
    whole = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_models_list_and_retrieve(client: openai.OpenAI, server: Server) -> None:
    listed = httpx.get(f"{server.v1}/models").json()
    assert_valid("ListModelsResponse", listed)
    assert [m["id"] for m in listed["data"]] == [MODEL_ID, "konsilium"], "the model, then the council"
    assert client.models.retrieve("konsilium").owned_by == "konsilium"
    model = client.models.retrieve(MODEL_ID)
    assert (model.id, model.object, model.owned_by) == (MODEL_ID, "model", "konsilium")
    assert_valid("Model", httpx.get(f"{server.v1}/models/{MODEL_ID}").json())


def test_health_and_ready(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    state = server.model_state()
    assert (state["state"], state["ready"]) == ("ready", True)
    assert isinstance(state["pid"], int)
