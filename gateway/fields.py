"""Conversions every door's request shares (chat, Responses, Messages): content text, function
tools, JSON output, a tool that `tool_choice` names. Each names the `param` it blames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msgspec import UnsetType

from gateway.schemas import check_schema
from konsilium.errors import InvalidRequestError, UnsupportedParameterError
from model_store.types import JsonOutput, ToolSpec


def joined_text(parts: Sequence[object], text_parts: type | tuple[type, ...], param: str) -> str:
    """The text of content `parts`, one per line; a part of another kind (an image, a file, audio)
    is refused: the local models read text only."""
    texts = []
    for part in parts:
        text = getattr(part, "text", None) if isinstance(part, text_parts) else None
        if not isinstance(text, str):
            raise UnsupportedParameterError(
                f"content parts of type {type(part).__name__} are not supported by local models", param=param
            )
        texts.append(text)
    return "\n".join(texts)


def json_output(schema: dict[str, Any] | UnsetType | None, param: str) -> JsonOutput:
    """JSON output, to `schema` when one is given (checked first: a bad schema is the client's 400)."""
    if schema is None or isinstance(schema, UnsetType):
        return JsonOutput()
    check_schema(schema, param)
    return JsonOutput(schema=schema)


def function_tool(name: str, description: str, parameters: dict[str, Any] | UnsetType | None, param: str) -> ToolSpec:
    """A function tool; no `parameters` is a function of no arguments."""
    schema: dict[str, object] = (
        {"type": "object", "properties": {}} if parameters is None or isinstance(parameters, UnsetType) else parameters
    )
    check_schema(schema, param)
    return ToolSpec(name=name, description=description, parameters=schema)


def named_tool(name: str | None, has_tools: bool, param: str = "tool_choice") -> str:
    """The tool a `tool_choice` names, which the request must define."""
    if name is None:
        raise InvalidRequestError("tool_choice names no function", param=param)
    if not has_tools:
        raise InvalidRequestError("tool_choice names a tool but no tools were given", param=param)
    return name
