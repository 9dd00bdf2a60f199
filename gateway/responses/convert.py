"""Responses API requests to `GenerationRequest`s: instructions, input items, tools, formats.

Items: `message` (or a bare `{role, content}`), `function_call` / `custom_tool_call` (the
assistant's calls; consecutive ones join the assistant message before them) and their
`*_output` (tool messages). Items the local models have nothing to do with (`reasoning`, hosted
tools' calls) are skipped; any other type is a 400 naming it. Tools: `function` and `custom`;
hosted tools (`web_search`, `local_shell`, `file_search`, …) are accepted and left out, since
nothing here runs them — a `tool_choice` that forces one is a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msgspec import UNSET

from gateway import fields
from gateway.errors import converted
from gateway.responses import protocol as r
from konsilium.errors import InvalidRequestError, UnsupportedParameterError
from model_store.types import GenerationRequest, JsonOutput, Message, Role, ToolCall, ToolSpec

_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
SKIPPED_ITEMS = frozenset({
    "reasoning", "web_search_call", "file_search_call", "computer_call", "computer_call_output",
    "code_interpreter_call", "image_generation_call", "local_shell_call", "local_shell_call_output",
    "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output", "mcp_list_tools",
    "mcp_call", "mcp_approval_request", "mcp_approval_response", "compaction", "tool_search_call",
    "tool_search_output",
})  # fmt: skip
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
    "file_search", "computer", "computer_use_preview", "code_interpreter", "image_generation", "mcp",
    "local_shell", "shell", "apply_patch", "tool_search", "namespace",
})  # fmt: skip


def generation(body: r.CreateResponse, history: Sequence[Message]) -> GenerationRequest:
    """`history`: the conversation a `previous_response_id` continues (its instructions not included)."""
    messages = (*history, *input_messages(body.input))
    if not any(m.role in ("user", "tool") for m in messages):
        raise InvalidRequestError("`input` holds no message to answer.", param="input")
    if body.instructions:
        messages = (Message(role="system", content=body.instructions), *messages)
    tools = tool_specs(body.tools or [])
    return GenerationRequest(
        kind="chat",
        stream=body.stream,
        messages=messages,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        json_output=_json_output(body.text),
        tools=tools,
        tool_choice=tool_choice(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls,
    )


def input_messages(given: str | list[dict[str, Any]]) -> tuple[Message, ...]:
    if isinstance(given, str):
        return (Message(role="user", content=given),) if given else ()
    messages: list[Message] = []
    for index, item in enumerate(given):
        _add(messages, item, f"input[{index}]")
    return tuple(messages)


def _add(messages: list[Message], item: dict[str, Any], at: str) -> None:
    kind = _type(item, "message", at)
    if kind == "message":
        message = converted(item, r.MessageItem, at)
        messages.append(Message(role=_ROLES[message.role], content=_text(message.content, f"{at}.content")))
    elif kind in ("function_call", "custom_tool_call"):
        call = _call(item, at)
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant":  # the text before the call, or an earlier call
            messages[-1] = Message(role="assistant", content=last.content, tool_calls=(*last.tool_calls, call))
        else:
            messages.append(Message(role="assistant", content="", tool_calls=(call,)))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        result = converted(item, r.FunctionCallOutputItem, at)
        messages.append(Message(role="tool", content=_text(result.output, f"{at}.output"), tool_call_id=result.call_id))
    elif kind not in SKIPPED_ITEMS:
        raise InvalidRequestError(f"input items of type {kind!r} are not supported", param=f"{at}.type")


def _type(obj: dict[str, Any], default: str, at: str) -> str:
    kind = obj.get("type", default)
    if not isinstance(kind, str):
        raise InvalidRequestError(f"`type` must be a string, got {type(kind).__name__}", param=f"{at}.type")
    return kind


def _call(item: dict[str, Any], at: str) -> ToolCall:
    if item.get("type") == "custom_tool_call":
        custom = converted(item, r.CustomToolCallItem, at)
        return ToolCall(id=custom.call_id, name=custom.name, arguments=custom.input)
    call = converted(item, r.FunctionCallItem, at)
    return ToolCall(id=call.call_id, name=call.name, arguments=call.arguments)


def _text(content: r.Parts, at: str) -> str:
    if isinstance(content, str):
        return content
    return fields.joined_text(content, r.TEXT_PARTS, at)


def tool_specs(tools: Sequence[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    specs = []
    for index, tool in enumerate(tools):
        at = f"tools[{index}]"
        kind = _type(tool, "function", at)
        if kind == "function":
            function = converted(tool, r.FunctionToolParam, at)
            specs.append(
                fields.function_tool(function.name, function.description or "", function.parameters, f"{at}.parameters")
            )
        elif kind == "custom":
            custom = converted(tool, r.CustomToolParam, at)
            specs.append(ToolSpec(name=custom.name, description=custom.description or ""))
        elif kind not in HOSTED_TOOLS:
            raise InvalidRequestError(f"tools of type {kind!r} are not supported", param=f"{at}.type")
    return tuple(specs)


def tool_choice(choice: str | dict[str, Any] | object, tools: Sequence[ToolSpec]) -> str:
    """`none`/`auto`/`required`, or the name of the tool it forces."""
    if choice is UNSET:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequestError(f"unknown tool_choice {choice!r}", param="tool_choice")
        if choice == "required" and not tools:
            raise InvalidRequestError("tool_choice is 'required' but no function tools were given", param="tool_choice")
        return choice if tools else "none"
    assert isinstance(choice, dict)
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        return fields.named_tool(name if isinstance(name, str) else None, bool(tools))
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        return tool_choice(mode if isinstance(mode, str) else "", tools)
    raise UnsupportedParameterError(
        f"tool_choice of type {kind!r} forces a hosted tool, and none runs here", param="tool_choice.type"
    )


def _json_output(text: r.TextParam | None) -> JsonOutput | None:
    if text is None or isinstance(text.format, r.TextFormatText):
        return None
    if isinstance(text.format, r.TextFormatJsonObject):
        return JsonOutput()
    return fields.json_output(text.format.schema, "text.format.schema")
