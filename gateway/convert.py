"""Validated wire requests to backend-neutral `GenerationRequest`s, field by field.

Nothing the client sent reaches a backend unless it is named here; everything that cannot be
honoured is refused with a 400 that names the parameter.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, UnsetType

from gateway import fields
from gateway import protocol as p
from gateway.responses.convert import input_messages  # the Responses API's items: one converter
from konsilium.errors import InvalidRequestError, UnsupportedParameterError
from model_store.types import GenerationRequest, JsonOutput, Message, Role, ToolCall, ToolSpec

_ROLES: dict[type[p.ChatMessage], Role] = {
    p.SystemMessage: "system",
    p.DeveloperMessage: "system",  # chat templates know no `developer`; it is a system prompt
    p.UserMessage: "user",
    p.AssistantMessage: "assistant",
    p.ToolMessage: "tool",
}


def chat_request(body: p.ChatCompletionRequest) -> GenerationRequest:
    """A chat body; Responses-shaped ones (Cursor's Agent: `input`, no `messages`) as well."""
    _require_single_choice(body.n)
    return GenerationRequest(
        kind="chat",
        stream=bool(body.stream),
        messages=_messages(body),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        json_output=_json_output(body.response_format),
        tools=tuple(_tool(t, i) for i, t in enumerate(body.tools or ())),
        tool_choice=_tool_choice(body.tool_choice, bool(body.tools)),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        **_sampling(body),
    )


def completion_request(body: p.CompletionRequest) -> GenerationRequest:
    _require_single_choice(body.n)
    if body.echo:
        raise UnsupportedParameterError("`echo` is not supported", param="echo")
    return GenerationRequest(
        kind="completion",
        stream=bool(body.stream),
        prompt=body.prompt if isinstance(body.prompt, str) else body.prompt[0],
        suffix=body.suffix or None,
        max_tokens=body.max_tokens or 16,  # OpenAI's documented default for completions
        top_logprobs=body.logprobs,
        **_sampling(body),
    )


def _sampling(body: p.ChatCompletionRequest | p.CompletionRequest) -> dict[str, Any]:
    """The sampling fields both endpoints share, already bounded by the wire types."""
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": _stops(body.stop),
        "seed": body.seed,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
    }


def _require_single_choice(n: int | None) -> None:
    if n is not None and n != 1:
        raise UnsupportedParameterError("only n=1 is supported by this gateway's backends", param="n")


def _messages(body: p.ChatCompletionRequest) -> tuple[Message, ...]:
    if not isinstance(body.messages, UnsetType):
        return tuple(_message(m, i) for i, m in enumerate(body.messages))
    if isinstance(body.input, UnsetType):
        raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
    messages = input_messages(body.input)
    if not messages:
        raise InvalidRequestError("`input` holds no message to answer.", param="input")
    return messages


def _message(message: p.ChatMessage, index: int) -> Message:
    role = _ROLES[type(message)]
    content = _text(message.content, f"messages[{index}].content")
    if isinstance(message, p.ToolMessage):
        return Message(role=role, content=content, tool_call_id=message.tool_call_id)
    name = message.name or None
    if isinstance(message, p.AssistantMessage) and message.tool_calls:
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in message.tool_calls
        )
        return Message(role=role, content=content.strip(), name=name, tool_calls=calls)
    return Message(role=role, content=content, name=name)


def _text(content: p.Content | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return fields.joined_text(content, p.TextPart, param)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _json_output(response_format: p.ResponseFormat | object) -> JsonOutput | None:
    if isinstance(response_format, p.JsonObjectFormat):
        return JsonOutput()
    if isinstance(response_format, p.JsonSchemaFormat):
        return fields.json_output(response_format.json_schema.schema, "response_format.json_schema.schema")
    return None


def _tool(tool: p.Tool, index: int) -> ToolSpec:
    if isinstance(tool, p.CustomTool):
        return ToolSpec(name=tool.name, description=tool.description)
    function = tool.function
    if function is None:  # a flat tool, as the Responses API (and Cursor's Agent) write them
        if tool.name is None:
            raise InvalidRequestError(
                f"Missing required parameter: 'tools[{index}].function'.", param=f"tools[{index}].function"
            )
        return fields.function_tool(tool.name, tool.description, tool.parameters, f"tools[{index}].parameters")
    return fields.function_tool(
        function.name, function.description, function.parameters, f"tools[{index}].function.parameters"
    )


def _tool_choice(choice: p.ToolChoice | object, has_tools: bool) -> str:
    if choice is UNSET:
        return "auto" if has_tools else "none"
    if isinstance(choice, p.NamedToolChoice):
        return fields.named_tool(choice.function.name if choice.function else choice.name, has_tools)
    return str(choice)
