"""Anthropic's Messages API requests as msgspec Structs, with Anthropic's names and bounds.

Content blocks stay plain JSON until `convert.py` reads them one by one (Anthropic adds block
types often: `thinking`, server tools' results); each known kind is converted to its Struct here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway import protocol as p

Blocks = Annotated[list[dict[str, Any]], Meta(max_length=p.MAX_MESSAGES)]


class _Request(msgspec.Struct, kw_only=True):
    pass


class InputMessage(_Request, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | Blocks


class TextBlock(_Request, kw_only=True):
    text: str


class ToolUseBlock(_Request, kw_only=True):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultBlock(_Request, kw_only=True):
    tool_use_id: str
    content: str | Blocks = ""
    is_error: bool = False


class ToolParam(_Request, kw_only=True):
    name: p.ToolName
    description: str = ""
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Request, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class _Conversation(_Request, kw_only=True):
    model: p.ShortText
    messages: Annotated[list[InputMessage], Meta(min_length=1, max_length=p.MAX_MESSAGES)]
    system: str | Blocks | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=512)] | None = None
    tool_choice: ToolChoice | None = None


class CreateMessage(_Conversation, kw_only=True):
    max_tokens: p.MaxTokens  # required, as Anthropic requires it
    stop_sequences: p.StopList | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: p.TopP | None = None
    top_k: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    metadata: dict[str, Any] | None = None  # `user_id`: accepted
    thinking: dict[str, Any] | None = None  # accepted; the local models do not think on request


class CountTokens(_Conversation, kw_only=True):
    thinking: dict[str, Any] | None = None


create_message_decoder = msgspec.json.Decoder(CreateMessage)
count_tokens_decoder = msgspec.json.Decoder(CountTokens)
