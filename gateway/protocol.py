"""OpenAI's wire protocol as msgspec Structs, with OpenAI's names and field order.

Requests: unknown fields are dropped (never forwarded); optional fields default to UNSET so we
know what the client actually sent; every number is bounded. Accepts what real clients send
beyond the spec (CLIENTS.md): Continue's ten `stop` strings, Cursor's flat `custom` tools,
`developer` messages, `reasoning_effort`. Responses mirror OpenAI's objects field for field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

# ---- bounds -----------------------------------------------------------------------------
MaxTokens = Annotated[int, Meta(ge=1, le=1_048_576)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]
StopString = Annotated[str, Meta(max_length=512)]
StopList = Annotated[list[StopString], Meta(max_length=32)]
ShortText = Annotated[str, Meta(max_length=256)]
MAX_MESSAGES = 10_000  # far past any context window; the body's size bounds the rest
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]


class _Request(msgspec.Struct, kw_only=True):
    pass


# ---- chat messages ----------------------------------------------------------------------
class TextPart(_Request, kw_only=True, tag_field="type", tag="text"):
    text: str


class ImageUrlPart(_Request, kw_only=True, tag_field="type", tag="image_url"):
    image_url: dict[str, Any]


class InputAudioPart(_Request, kw_only=True, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any]


class FilePart(_Request, kw_only=True, tag_field="type", tag="file"):
    file: dict[str, Any]


ContentPart = TextPart | ImageUrlPart | InputAudioPart | FilePart
Content = str | list[ContentPart]


class FunctionCall(_Request, kw_only=True):
    name: str
    arguments: str = ""


class MessageToolCall(_Request, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionCall


class SystemMessage(_Request, kw_only=True, tag_field="role", tag="system"):
    content: Content
    name: str | UnsetType = UNSET


class DeveloperMessage(_Request, kw_only=True, tag_field="role", tag="developer"):
    content: Content
    name: str | UnsetType = UNSET


class UserMessage(_Request, kw_only=True, tag_field="role", tag="user"):
    content: Content
    name: str | UnsetType = UNSET


class AssistantMessage(_Request, kw_only=True, tag_field="role", tag="assistant"):
    content: Content | None = None
    name: str | UnsetType = UNSET
    tool_calls: list[MessageToolCall] | UnsetType = UNSET
    refusal: str | None = None


class ToolMessage(_Request, kw_only=True, tag_field="role", tag="tool"):
    content: Content
    tool_call_id: str


ChatMessage = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


# ---- tools and formats --------------------------------------------------------------------
ToolName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class FunctionDefinition(_Request, kw_only=True):
    name: ToolName
    description: str = ""
    parameters: dict[str, Any] | UnsetType = UNSET
    strict: bool | None = None


class FunctionTool(_Request, kw_only=True, tag_field="type", tag="function"):
    """A function tool: nested under `function` as chat defines it, or flat (`name`,
    `parameters` beside `type`) as the Responses API does and Cursor's Agent sends to chat."""

    function: FunctionDefinition | None = None
    name: ToolName | None = None
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomTool(_Request, kw_only=True, tag_field="type", tag="custom"):
    """Cursor's flat grammar tools; their calls go back as functions with raw text arguments."""

    name: ToolName
    description: str = ""
    format: dict[str, Any] | UnsetType = UNSET


Tool = FunctionTool | CustomTool


class NamedFunction(_Request, kw_only=True):
    name: str


class NamedToolChoice(_Request, kw_only=True):
    type: str = "function"
    function: NamedFunction | None = None
    name: str | None = None  # flat, as the Responses API writes it


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(_Request, kw_only=True, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(_Request, kw_only=True, tag_field="type", tag="json_object"):
    pass


class JsonSchemaSpec(_Request, kw_only=True):
    name: str = "output"
    description: str = ""
    schema: dict[str, Any] | UnsetType = UNSET
    strict: bool | None = None


class JsonSchemaFormat(_Request, kw_only=True, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class StreamOptions(_Request, kw_only=True):
    include_usage: bool = False


# ---- requests -----------------------------------------------------------------------------
InputItems = Annotated[list[dict[str, Any]], Meta(max_length=MAX_MESSAGES)]


class ChatCompletionRequest(_Request, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_MESSAGES)] | UnsetType = UNSET
    input: str | InputItems | UnsetType = UNSET  # Responses-shaped (Cursor's Agent): instead of `messages`
    model: ShortText
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    response_format: ResponseFormat | UnsetType = UNSET
    seed: Seed | None = None
    stop: StopString | StopList | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: Annotated[list[Tool], Meta(max_length=512)] | None = None
    tool_choice: ToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | None = None
    user: ShortText | UnsetType = UNSET
    metadata: Metadata | None = None
    reasoning_effort: ShortText | None = None


class CompletionRequest(_Request, kw_only=True):
    model: ShortText
    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)]
    suffix: str | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    stop: StopString | StopList | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    best_of: Annotated[int, Meta(ge=1, le=1)] | None = None
    seed: Seed | None = None
    user: ShortText | UnsetType = UNSET


# ---- responses ----------------------------------------------------------------------------
class _Response(msgspec.Struct, kw_only=True):
    pass


class TopLogprob(_Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(_Response, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Response, kw_only=True):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ResponseFunctionCall(_Response, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str = ""


class ResponseToolCall(_Response, kw_only=True):
    id: str
    type: str = "function"
    function: ResponseFunctionCall


class ResponseMessage(_Response, kw_only=True):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ResponseToolCall] | UnsetType = UNSET
    # the council's agents (DeepSeek's and vLLM's name for a model's thinking, which Continue,
    # Cline and Open WebUI show as such)
    reasoning_content: str | UnsetType = UNSET


class ChatChoice(_Response, kw_only=True):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class PromptTokensDetails(_Response, kw_only=True):
    cached_tokens: int  # prompt tokens whose KV cache was reused, not computed again


class CompletionUsage(_Response, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | UnsetType = UNSET


class CouncilCall(_Response, kw_only=True, omit_defaults=True):
    """One call of a council: an agent's, a ranker's or the Director's."""

    role: str
    status: str  # ok | failed | timeout
    model: str | None = None
    adapter: str | None = None
    started_ms: float  # from the council's start
    latency_ms: float
    usage: CompletionUsage | None = None
    fallbacks: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class CouncilReport(_Response, kw_only=True, omit_defaults=True):
    """`konsilium`, beside `choices`: who sat on the council and how each call went."""

    council: str
    agents: list[CouncilCall]
    director: CouncilCall
    ranking: list[str] = msgspec.field(default_factory=list)
    rankers: list[CouncilCall] = msgspec.field(default_factory=list)


class ChatCompletion(_Response, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    konsilium: CouncilReport | UnsetType = UNSET


class ToolCallChunk(_Response, kw_only=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: ResponseFunctionCall | UnsetType = UNSET


class ChunkDelta(_Response, kw_only=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET
    tool_calls: list[ToolCallChunk] | UnsetType = UNSET


class ChunkChoice(_Response, kw_only=True):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Response, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | UnsetType = UNSET
    konsilium: CouncilReport | UnsetType = UNSET  # on a council stream's last chunk


class CompletionChoice(_Response, kw_only=True):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class TextCompletion(_Response, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | UnsetType = UNSET


class Model(_Response, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    context_length: int | None = None  # extension: the context the model is served with
    state: str | None = None  # extension: unloaded | loading | ready | unloading | failed
    parent: str | UnsetType = UNSET  # extension (as vLLM): the base model of a LoRA adapter


class ModelList(_Response, kw_only=True):
    object: str = "list"
    data: list[Model]


class ErrorDetail(_Response, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Response, kw_only=True):
    error: ErrorDetail


chat_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_request_decoder = msgspec.json.Decoder(CompletionRequest)
encoder = msgspec.json.Encoder()
