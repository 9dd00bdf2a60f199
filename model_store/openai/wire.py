"""The upstream's side of the wire: request bodies built field by field, chunks read leniently.

Upstream chunks are foreign data: they are decoded into small tolerant Structs that keep only
what becomes an `Event`; everything else the upstream sends is ignored.
"""

from __future__ import annotations

import msgspec

from model_store.types import GenerationRequest, message_dict, tool_dict


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallPiece(msgspec.Struct):
    index: int | None = None  # present in stream deltas; a whole message's calls go by position
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCallPiece] | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float


class ContentLogprob(msgspec.Struct):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(msgspec.Struct):
    content: list[ContentLogprob] | None = None


class Choice(msgspec.Struct):
    index: int = 0
    delta: Delta | None = None
    message: Delta | None = None
    text: str | None = None
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class PromptTokensDetailsBody(msgspec.Struct):
    cached_tokens: int | None = None


class UsageBody(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetailsBody | None = None


class ErrorBody(msgspec.Struct):
    message: str = "upstream error"


class Chunk(msgspec.Struct):
    """A stream chunk or a whole (non-streaming) response: they share this much shape."""

    choices: list[Choice] = []
    usage: UsageBody | None = None
    error: ErrorBody | None = None


chunk_decoder = msgspec.json.Decoder(Chunk)
_encoder = msgspec.json.Encoder()


def request_body(request: GenerationRequest, model: str) -> bytes:
    body: dict[str, object] = {"model": model, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.kind == "chat":
        body["messages"] = [message_dict(m) for m in request.messages]
    else:
        body["prompt"] = request.prompt
        if request.suffix is not None:
            body["suffix"] = request.suffix
    optional = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "stop": list(request.stop) or None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.top_logprobs is not None:
        body.update(logprobs=True, top_logprobs=request.top_logprobs)
    if request.json_output is not None:
        schema = request.json_output.schema
        body["response_format"] = (
            {"type": "json_object"}
            if schema is None
            else {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        )
    if request.tools:
        body["tools"] = [tool_dict(t) for t in request.tools]
        body["tool_choice"] = _tool_choice(request.tool_choice)
    return _encoder.encode(body)


def _tool_choice(choice: str) -> object:
    if choice in ("none", "auto", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}
