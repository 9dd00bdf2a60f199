"""The upstream's side of the wire: request bodies built field by field, chunks read leniently.

Upstream chunks are foreign data: they are decoded into small tolerant Structs that keep only
what becomes an `Event`; everything else the upstream sends is ignored.
"""

from __future__ import annotations

import base64
import binascii
import struct

import msgspec

from konsilium.errors import BackendError
from model_store.types import EmbeddingRequest, Embeddings, GenerationRequest, message_dict, tool_dict


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


class EmbeddingItem(msgspec.Struct):
    index: int | None = None
    embedding: list[float] | str = []  # floats, or base64 float32 from a server that sends it anyway


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0


class EmbeddingList(msgspec.Struct):
    data: list[EmbeddingItem] = []
    usage: EmbeddingUsage | None = None


embeddings_decoder = msgspec.json.Decoder(EmbeddingList)


def embedding_body(request: EmbeddingRequest, model: str) -> bytes:
    body: dict[str, object] = {"model": model, "input": list(request.texts) or [list(t) for t in request.tokens]}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return _encoder.encode(body)


def embeddings(raw: bytes, count: int, upstream: str) -> Embeddings:
    """An upstream's embeddings answer: one vector per input, put back in input order."""
    try:
        answer = embeddings_decoder.decode(raw)
        items = sorted(answer.data, key=lambda item: item.index if item.index is not None else -1)
        if [item.index for item in items] != list(range(count)) and len(items) == count:
            items = answer.data  # no (or odd) indices: by position, as the list came
        vectors = tuple(_float32(item.embedding) for item in items)
    except (msgspec.DecodeError, ValueError, OverflowError, binascii.Error) as exc:
        raise BackendError(f"upstream {upstream} sent unreadable embeddings: {exc}") from exc
    if len(vectors) != count:
        raise BackendError(f"upstream {upstream} sent {len(vectors)} embeddings for {count} inputs")
    return Embeddings(vectors=vectors, prompt_tokens=answer.usage.prompt_tokens if answer.usage else 0)


def _float32(embedding: list[float] | str) -> bytes:
    if isinstance(embedding, str):
        packed = base64.b64decode(embedding, validate=True)
        if len(packed) % 4:
            raise ValueError("base64 embedding is not whole float32s")
        return packed
    return struct.pack(f"<{len(embedding)}f", *embedding)
