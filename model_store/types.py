"""Plain data that crosses the gateway/backend boundary (and the worker pipe, as msgpack).

A `GenerationRequest` is built by the gateway, field by field, from a validated client request;
every number in it is already bounded. Backends answer with a stream of `Event`s. Both are
backend-neutral: a backend translates them to its own API at its edge.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls"]


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class ToolSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """A tool the model may call; `parameters` is a JSON schema, None for free-text tools."""

    name: str
    description: str = ""
    parameters: dict[str, object] | None = None


class JsonOutput(msgspec.Struct, frozen=True, omit_defaults=True):
    """Constrain output to JSON, optionally to a JSON schema (`response_format`)."""

    schema: dict[str, object] | None = None


class GenerationRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """What to generate. `messages` for chat, `prompt` (+ `suffix`) for text completion."""

    kind: Literal["chat", "completion"]
    stream: bool = True  # False: the consumer wants the whole answer at once (a backend may use it)
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    suffix: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # Anthropic's `top_k`; llama.cpp honours it, OpenAI-compatible upstreams are not sent it
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_logprobs: int | None = None
    json_output: JsonOutput | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "none"  # "none" | "auto" | "required" | a tool's name
    parallel_tool_calls: bool = True  # the model may make several calls in one answer


class TokenLogprob(msgspec.Struct, frozen=True):
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None  # of the prompt tokens, those read from a KV cache (when known)


class TextDelta(msgspec.Struct, frozen=True, tag=True, omit_defaults=True):
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


class ToolCallDelta(msgspec.Struct, frozen=True, tag=True, omit_defaults=True):
    """A piece of a tool call; `id` and `name` arrive on the first piece of each call."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


class Finish(msgspec.Struct, frozen=True, tag=True):
    """The last event of every successful stream."""

    reason: FinishReason
    usage: Usage


Event = TextDelta | ToolCallDelta | Finish


def message_dict(message: Message) -> dict[str, object]:
    """The OpenAI-shaped dict of a message (what chat templates and upstreams read)."""
    out: dict[str, object] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def tool_dict(tool: ToolSpec) -> dict[str, object]:
    function: dict[str, object] = {"name": tool.name, "description": tool.description}
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bounds on one embeddings request
MAX_EMBEDDING_TOKENS = 300_000  # summed over its inputs


class EmbeddingRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """What to embed: texts, or token ids of the model's own vocabulary (one kind per request, as
    OpenAI's `input`); the gateway has checked that each input is there and the bounds above."""

    texts: tuple[str, ...] = ()
    tokens: tuple[tuple[int, ...], ...] = ()
    dimensions: int | None = None  # the vector's first N components, re-normalised (a Matryoshka model)

    @property
    def count(self) -> int:
        return len(self.texts) or len(self.tokens)


class Embeddings(msgspec.Struct, frozen=True):
    """One unit-length vector per input, in input order, each as little-endian float32 bytes (what
    OpenAI's `encoding_format: base64` carries); `prompt_tokens` counts every input's tokens."""

    vectors: tuple[bytes, ...]
    prompt_tokens: int
