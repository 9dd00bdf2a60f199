"""Wire requests → GenerationRequest: what real clients send is accepted, nothing else passes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from gateway import convert
from gateway import protocol as p
from gateway.errors import from_decode_error
from konsilium.errors import InvalidRequestError, UnsupportedParameterError
from model_store.types import GenerationRequest, JsonOutput, Message, ToolCall, ToolSpec


def chat(**body: Any) -> GenerationRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return convert.chat_request(p.chat_request_decoder.decode(json.dumps(body)))


def decode_error(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(msgspec.DecodeError) as caught:
        p.chat_request_decoder.decode(json.dumps(body))
    return from_decode_error(caught.value)


def test_continue_autocomplete_body_with_ten_stops_is_accepted() -> None:
    stops = [f"\n{i}" for i in range(10)]
    body = {"model": "m", "prompt": "<fim_prefix>def f(", "temperature": 0.01, "stop": stops, "max_tokens": 64}
    request = convert.completion_request(p.completion_request_decoder.decode(json.dumps(body)))
    assert request.stop == tuple(stops)
    assert (request.kind, request.prompt, request.temperature, request.max_tokens) == (
        "completion",
        "<fim_prefix>def f(",
        0.01,
        64,
    )


def test_messages_are_normalized_for_templates() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": " ",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    )
    assert request.messages == (
        Message(role="system", content="be brief"),
        Message(role="user", content="a\nb"),
        Message(role="assistant", content="", tool_calls=(ToolCall(id="c1", name="f", arguments="{}"),)),
        Message(role="tool", content="42", tool_call_id="c1"),
    )


def test_unknown_fields_are_dropped_and_known_ones_kept() -> None:
    request = chat(
        temperature=0,
        max_tokens=7,
        max_completion_tokens=5,
        stop="END",
        seed=3,
        user="u",
        metadata={"k": "v"},
        reasoning_effort="high",
        parallel_tool_calls=False,
        logit_bias={"1": 100},
        some_future_field={"x": 1},
    )
    assert request == GenerationRequest(
        kind="chat",
        stream=False,
        messages=(Message(role="user", content="hi"),),
        max_tokens=5,
        temperature=0.0,
        stop=("END",),
        seed=3,
        parallel_tool_calls=False,
    )


def test_cursor_mixed_tools_and_named_choice() -> None:
    request = chat(
        tools=[
            {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
            {"type": "custom", "name": "apply_patch", "description": "patch", "format": {"type": "grammar"}},
        ],
        tool_choice={"type": "function", "function": {"name": "read"}},
    )
    assert request.tools == (
        ToolSpec(name="read", parameters={"type": "object"}),
        ToolSpec(name="apply_patch", description="patch"),
    )
    assert request.tool_choice == "read"


def test_tool_choice_defaults_follow_openai() -> None:
    assert chat().tool_choice == "none"
    assert chat(tools=[{"type": "function", "function": {"name": "f"}}]).tool_choice == "auto"


def test_response_formats() -> None:
    assert chat(response_format={"type": "text"}).json_output is None
    assert chat(response_format={"type": "json_object"}).json_output == JsonOutput()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert chat(response_format=fmt).json_output == JsonOutput(schema=schema)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["s"] * 33}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_validation_errors_name_the_param(body: dict[str, Any], param: str | None) -> None:
    error = decode_error(body)
    assert error.status == 400
    assert error.error_type == "invalid_request_error"
    assert error.param == param
    assert error.message


def test_missing_required_field_is_named_in_the_message() -> None:
    assert decode_error({"messages": [{"role": "user", "content": "x"}]}).message == (
        "Missing required parameter: 'model'."
    )


def test_missing_messages_is_named_once_the_body_is_read() -> None:
    """`messages` may be absent when `input` stands in (Cursor's Agent); with neither it is named."""
    with pytest.raises(InvalidRequestError) as caught:
        convert.chat_request(p.chat_request_decoder.decode(b'{"model": "m"}'))
    assert (caught.value.status, caught.value.param) == (400, "messages")
    assert caught.value.message == "Missing required parameter: 'messages'."


def test_cursor_agent_body_on_chat_is_read_as_its_input_and_flat_tools() -> None:
    """Cursor's Agent posts Responses-shaped bodies to chat: `input` items, flat function tools."""
    body = dict(
        model="m",
        input=[
            {"role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "a.py"},
        ],
        tools=[{"type": "function", "name": "ls", "description": "list", "parameters": {"type": "object"}}],
    )
    request = convert.chat_request(p.chat_request_decoder.decode(json.dumps(body)))
    assert request.messages == (
        Message(role="system", content="be brief"),
        Message(role="user", content="list files"),
        Message(role="assistant", content="", tool_calls=(ToolCall(id="c1", name="ls", arguments="{}"),)),
        Message(role="tool", content="a.py", tool_call_id="c1"),
    )
    assert request.tools == (ToolSpec(name="ls", description="list", parameters={"type": "object"}),)
    assert request.tool_choice == "auto"


def test_a_function_tool_with_neither_shape_names_its_function() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chat(tools=[{"type": "function", "description": "no name"}])
    assert caught.value.param == "tools[0].function"


def test_n_above_one_is_a_clear_400() -> None:
    with pytest.raises(UnsupportedParameterError) as caught:
        chat(n=2)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, "n", "unsupported_parameter")


def test_images_are_refused_by_name() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(UnsupportedParameterError) as caught:
        chat(messages=[{"role": "user", "content": [image]}])
    assert caught.value.param == "messages[0].content"


def test_named_tool_choice_without_tools_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chat(tool_choice={"type": "function", "function": {"name": "f"}})
    assert caught.value.param == "tool_choice"
