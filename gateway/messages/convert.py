"""Anthropic Messages requests to `GenerationRequest`s.

`system` (a string or text blocks) is the system message. In `messages`: `text` blocks are the
text; an assistant's `tool_use` blocks are its tool calls (arguments as JSON text); a user's
`tool_result` blocks become tool messages, before the user's own text; `thinking` blocks and
server tools' blocks are skipped; images and documents are refused (the local models read text).
Tools: the client's own (`custom`, or no `type`); Anthropic-defined ones (`bash_…`,
`web_search_…`, `text_editor_…`) are accepted and left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway import fields
from gateway.errors import converted
from gateway.messages import protocol as a
from konsilium.errors import InvalidRequestError, UnsupportedParameterError
from model_store.types import GenerationRequest, Message, ToolCall, ToolSpec

SKIPPED_BLOCKS = frozenset({
    "thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
    "code_execution_tool_result", "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload",
})  # fmt: skip
REFUSED_BLOCKS = frozenset({"image", "document", "search_result"})


def generation(body: a.CreateMessage) -> GenerationRequest:
    tools = tool_specs(body.tools or [])
    return GenerationRequest(
        kind="chat",
        stream=body.stream,
        messages=messages(body),
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k or None,
        stop=tuple(body.stop_sequences or ()),
        tools=tools,
        tool_choice=tool_choice(body.tool_choice, tools),
        parallel_tool_calls=not (body.tool_choice and body.tool_choice.disable_parallel_tool_use),
    )


def messages(body: a.CreateMessage | a.CountTokens) -> tuple[Message, ...]:
    out: list[Message] = []
    if body.system:
        out.append(Message(role="system", content=_text(body.system, "system")))
    for index, message in enumerate(body.messages):
        at = f"messages[{index}].content"
        if isinstance(message.content, str):
            out.append(Message(role=message.role, content=message.content))
            continue
        text, calls, results = _read(message.content, at)
        if message.role == "assistant":
            out.append(Message(role="assistant", content=text, tool_calls=calls))
        else:  # the results answer the calls before them: they come before the user's own text
            out += results
            out += [Message(role="user", content=text)] if text or not results else []
    return tuple(out)


def _read(blocks: Sequence[dict[str, Any]], at: str) -> tuple[str, tuple[ToolCall, ...], list[Message]]:
    """A message's blocks: its text, its tool calls (`tool_use`) and its tool results."""
    texts, calls, results = [], [], []
    for index, block in enumerate(blocks):
        where = f"{at}[{index}]"
        kind = _kind(block, where)
        if kind == "text":
            texts.append(converted(block, a.TextBlock, where).text)
        elif kind == "tool_use":
            use = converted(block, a.ToolUseBlock, where)
            calls.append(ToolCall(id=use.id, name=use.name, arguments=json.dumps(use.input, ensure_ascii=False)))
        elif kind == "tool_result":
            result = converted(block, a.ToolResultBlock, where)
            content = _text(result.content, f"{where}.content")
            results.append(Message(role="tool", content=content, tool_call_id=result.tool_use_id))
    return "\n".join(texts), tuple(calls), results


def _kind(block: dict[str, Any], at: str) -> str | None:
    """A block's type when it carries text or a call; None for one skipped; a refusal otherwise."""
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidRequestError("a content block's `type` must be a string", param=f"{at}.type")
    if kind in ("text", "tool_use", "tool_result"):
        return kind
    if kind in SKIPPED_BLOCKS:
        return None
    if kind in REFUSED_BLOCKS:
        raise UnsupportedParameterError(f"content blocks of type {kind!r} are not supported by local models", param=at)
    raise InvalidRequestError(f"unknown content block type {kind!r}", param=f"{at}.type")


def _text(content: str | Sequence[dict[str, Any]], at: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for index, block in enumerate(content):
        if _kind(block, f"{at}[{index}]") == "text":
            texts.append(converted(block, a.TextBlock, f"{at}[{index}]").text)
    return "\n".join(texts)


def tool_specs(tools: Sequence[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    specs = []
    for index, tool in enumerate(tools):
        if tool.get("type", "custom") != "custom":  # (a non-string type is no custom tool either)
            continue  # an Anthropic-defined tool (bash, web search, text editor): nothing here runs it
        spec = converted(tool, a.ToolParam, f"tools[{index}]")
        specs.append(
            fields.function_tool(spec.name, spec.description, spec.input_schema, f"tools[{index}].input_schema")
        )
    return tuple(specs)


def tool_choice(choice: a.ToolChoice | None, tools: Sequence[ToolSpec]) -> str:
    if choice is None or choice.type == "auto":
        return "auto" if tools else "none"
    if choice.type == "none":
        return "none"
    if not tools:
        raise InvalidRequestError(f"tool_choice {choice.type!r} needs tools", param="tool_choice")
    if choice.type == "any":
        return "required"
    return fields.named_tool(choice.name, True)
