"""The Responses API's wire objects as msgspec Structs, with OpenAI's names.

The request's `input` items and `tools` stay plain JSON until `convert.py` reads them one by one:
both are open unions (hosted tools, items of tools we do not run) that a tagged Struct union
would refuse whole; each known kind is then converted to its Struct here, so a mistake is still
a 400 naming its path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway import protocol as p


class _Request(msgspec.Struct, kw_only=True):
    pass


# ---- input items --------------------------------------------------------------------------
class InputText(_Request, kw_only=True, tag_field="type", tag="input_text"):
    text: str


class OutputTextPart(_Request, kw_only=True, tag_field="type", tag="output_text"):
    text: str


class RefusalPart(_Request, kw_only=True, tag_field="type", tag="refusal"):
    refusal: str


class InputImage(_Request, kw_only=True, tag_field="type", tag="input_image"):
    image_url: str | None = None


class InputFile(_Request, kw_only=True, tag_field="type", tag="input_file"):
    filename: str | None = None


class InputAudio(_Request, kw_only=True, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any] | None = None


InputPart = InputText | OutputTextPart | RefusalPart | InputImage | InputFile | InputAudio
TEXT_PARTS = (InputText, OutputTextPart)
Parts = str | list[InputPart]


class MessageItem(_Request, kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: Parts


class FunctionCallItem(_Request, kw_only=True):
    call_id: str
    name: str
    arguments: str = ""


class FunctionCallOutputItem(_Request, kw_only=True):
    call_id: str
    output: Parts


class CustomToolCallItem(_Request, kw_only=True):
    """A call of a `custom` (free-text) tool: its `input` is what the model wrote."""

    call_id: str
    name: str
    input: str = ""


# ---- tools --------------------------------------------------------------------------------
class FunctionToolParam(_Request, kw_only=True):
    name: p.ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomToolParam(_Request, kw_only=True):
    name: p.ToolName
    description: str | None = None


# ---- text formats -------------------------------------------------------------------------
class TextFormatText(_Request, kw_only=True, tag_field="type", tag="text"):
    pass


class TextFormatJsonObject(_Request, kw_only=True, tag_field="type", tag="json_object"):
    pass


class TextFormatJsonSchema(_Request, kw_only=True, tag_field="type", tag="json_schema"):
    name: str = "output"
    description: str | None = None
    schema: dict[str, Any] | UnsetType = UNSET
    strict: bool | None = None


TextFormat = TextFormatText | TextFormatJsonObject | TextFormatJsonSchema


class TextParam(_Request, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=TextFormatText)
    verbosity: str | None = None


# ---- the request --------------------------------------------------------------------------
class CreateResponse(_Request, kw_only=True):
    model: p.ShortText
    input: str | p.InputItems = ""
    instructions: str | None = None
    previous_response_id: Annotated[str, Meta(max_length=128)] | None = None
    store: bool = True
    stream: bool = False
    tools: Annotated[list[dict[str, Any]], Meta(max_length=512)] | None = None
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool = True
    text: TextParam | None = None
    max_output_tokens: p.MaxTokens | None = None
    temperature: p.Temperature | None = None
    top_p: p.TopP | None = None
    metadata: p.Metadata | None = None
    user: p.ShortText | None = None
    reasoning: dict[str, Any] | None = None  # accepted; the local models do not think on request


create_response_decoder = msgspec.json.Decoder(CreateResponse)


# ---- the response -------------------------------------------------------------------------
class _Response(msgspec.Struct, kw_only=True):
    pass


class OutputText(_Response, kw_only=True):
    type: str = "output_text"
    text: str = ""
    annotations: list[object] = msgspec.field(default_factory=list)
    logprobs: list[object] = msgspec.field(default_factory=list)


class ReasoningText(_Response, kw_only=True):
    type: str = "reasoning_text"
    text: str = ""


class MessageOutput(_Response, kw_only=True):
    id: str
    type: str = "message"
    status: str = "in_progress"
    role: str = "assistant"
    content: list[OutputText] = msgspec.field(default_factory=list)


class FunctionCallOutput(_Response, kw_only=True):
    id: str
    type: str = "function_call"
    status: str = "in_progress"
    call_id: str
    name: str
    arguments: str = ""


class ReasoningOutput(_Response, kw_only=True):
    """A council's agents, as the reasoning the verdict weighed."""

    id: str
    type: str = "reasoning"
    status: str = "in_progress"
    summary: list[object] = msgspec.field(default_factory=list)
    content: list[ReasoningText] = msgspec.field(default_factory=list)


OutputItem = MessageOutput | FunctionCallOutput | ReasoningOutput


class InputTokensDetails(_Response, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(_Response, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(_Response, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(_Response, kw_only=True):
    code: str
    message: str


class IncompleteDetails(_Response, kw_only=True):
    reason: str


class Response(_Response, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: str
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: str = "disabled"
    usage: ResponseUsage | UnsetType = UNSET  # once finished
    user: str | UnsetType = UNSET  # (deprecated by OpenAI) echoed when sent
    metadata: dict[str, str]
    konsilium: p.CouncilReport | UnsetType = UNSET  # extension: a council's report


class DeletedResponse(_Response, kw_only=True):
    id: str
    object: str = "response"
    deleted: bool = True
