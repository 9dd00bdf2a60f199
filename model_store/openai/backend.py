"""`OpenAIBackend`: relay to an OpenAI-compatible server, chunk by chunk, with no buffering.

Upstream is always asked to stream (with usage); non-streaming answers are assembled by the
gateway from the same events, in one place. The API key is read from the environment variable
the config names, at load time, and never logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import get_args

import httpx

from konsilium.config import OpenAIModel
from konsilium.errors import BackendError, BackendUnavailableError, UnsupportedParameterError
from model_store.backend import Health, ModelInfo, State
from model_store.openai import wire
from model_store.openai.errors import translate_status, translate_transport_error
from model_store.types import (
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

_FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))


class OpenAIBackend:
    def __init__(self, config: OpenAIModel, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._config = config
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._state: State = "unloaded"
        self._detail = ""
        self._created = int(time.time())
        self._upstream = config.url.rstrip("/")

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            id=self._config.id,
            owned_by=self._config.owned_by,
            created=self._created,
            context_length=self._config.context_length,
        )

    async def load(self) -> None:
        if self._client is not None:
            return
        headers = {"user-agent": "konsilium"}
        if self._config.api_key_env:
            key = os.environ.get(self._config.api_key_env)
            if not key:
                self._state, self._detail = "failed", f"environment variable {self._config.api_key_env} is not set"
                raise BackendUnavailableError(f"model {self._config.id!r}: {self._detail}")
            headers["authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(self._config.read_timeout_s, connect=self._config.connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=self._upstream, headers=headers, timeout=timeout, transport=self._transport
        )
        self._state, self._detail = "ready", ""

    async def unload(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client, self._state = None, "unloaded"

    def health(self) -> Health:
        return Health(state=self._state, ready=self._client is not None, detail=self._detail)

    def memory_need_mb(self) -> int:
        return 0

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if request.kind == "completion" and request.top_logprobs is not None:
            raise UnsupportedParameterError("logprobs are not relayed for text completions", param="logprobs")
        await self.load()
        assert self._client is not None
        path = "/chat/completions" if request.kind == "chat" else "/completions"
        body = wire.request_body(request, self._config.upstream_model or self._config.id)
        try:
            async with self._client.stream(
                "POST", path, content=body, headers={"content-type": "application/json"}
            ) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise translate_status(
                        response.status_code, raw, response.headers.get("retry-after"), self._upstream
                    )
                async for event in _events(response.aiter_lines(), self._upstream):
                    yield event
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc, self._upstream) from exc


async def _events(lines: AsyncIterator[str], upstream: str) -> AsyncIterator[Event]:
    """SSE `data:` lines to events; the Finish waits for the usage chunk that may follow."""
    reason: FinishReason | None = None
    usage = Usage(prompt_tokens=0, completion_tokens=0)
    async for line in lines:
        if not line.startswith("data:"):
            continue  # comments, `event:` lines, blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = _decode(data, upstream)
        if chunk.usage is not None:
            usage = Usage(prompt_tokens=chunk.usage.prompt_tokens, completion_tokens=chunk.usage.completion_tokens)
        for choice in chunk.choices[:1]:
            for event in _choice_events(choice):
                yield event
            if choice.finish_reason is not None:
                reason = choice.finish_reason if choice.finish_reason in _FINISH_REASONS else "stop"  # type: ignore[assignment]
    if reason is None:
        raise BackendError(f"upstream {upstream} ended the stream before a finish_reason")
    yield Finish(reason=reason, usage=usage)


def _decode(data: str, upstream: str) -> wire.Chunk:
    try:
        chunk = wire.chunk_decoder.decode(data)
    except ValueError as exc:
        raise BackendError(f"upstream {upstream} sent an unreadable chunk: {exc}") from exc
    if chunk.error is not None:
        raise BackendError(f"upstream {upstream} failed mid-stream: {chunk.error.message[:500]}")
    return chunk


def _choice_events(choice: wire.Choice) -> list[Event]:
    events: list[Event] = []
    text = choice.delta.content if choice.delta is not None else choice.text
    if text:
        events.append(TextDelta(text=text, logprobs=_logprobs(choice.logprobs)))
    for piece in (choice.delta.tool_calls or []) if choice.delta is not None else []:
        function = piece.function or wire.FunctionDelta()
        events.append(
            ToolCallDelta(index=piece.index, id=piece.id, name=function.name, arguments=function.arguments or "")
        )
    return events


def _logprobs(logprobs: wire.ChoiceLogprobs | None) -> tuple[TokenLogprob, ...]:
    if logprobs is None or not logprobs.content:
        return ()
    return tuple(
        TokenLogprob(token=c.token, logprob=c.logprob, top=tuple((t.token, t.logprob) for t in c.top_logprobs))
        for c in logprobs.content
    )
