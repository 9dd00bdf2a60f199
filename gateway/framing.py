"""Events to OpenAI objects: streamed chunks and the non-streaming responses assembled from them.

One `Responder` per request kind knows the ids and the model name; `chunk()` turns one event
into the wire chunk a stream sends, and `assemble()` folds a whole event list into the single
response object a non-streaming request gets — the one place non-streaming answers are built.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from msgspec import UNSET

from gateway import protocol as p
from model_store.types import Event, Finish, TextDelta, TokenLogprob, ToolCallDelta, Usage


class Responder(Protocol):
    def first(self) -> p.ChatCompletionChunk | p.TextCompletion | None: ...

    def chunk(self, event: Event) -> p.ChatCompletionChunk | p.TextCompletion: ...

    def usage_chunk(self, usage: Usage) -> p.ChatCompletionChunk | p.TextCompletion: ...

    def assemble(self, events: Sequence[Event]) -> p.ChatCompletion | p.TextCompletion: ...


def completion_usage(usage: Usage) -> p.CompletionUsage:
    cached = usage.cached_tokens
    return p.CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=UNSET if cached is None else p.PromptTokensDetails(cached_tokens=cached),
    )


def _finish(events: Sequence[Event]) -> Finish:
    last = events[-1] if events else None
    assert isinstance(last, Finish), "a finished stream always ends with Finish"
    return last


def _token_logprobs(logprobs: Sequence[TokenLogprob]) -> list[p.TokenLogprob]:
    return [
        p.TokenLogprob(
            token=lp.token,
            logprob=lp.logprob,
            bytes=list(lp.token.encode("utf-8")),
            top_logprobs=[p.TopLogprob(token=t, logprob=v, bytes=list(t.encode("utf-8"))) for t, v in lp.top],
        )
        for lp in logprobs
    ]


class _Identity:
    """What every object of one response shares: its id, creation time and model name."""

    id_prefix = ""

    def __init__(self, model: str, *, logprobs: bool) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self._logprobs = logprobs


class ChatResponder(_Identity):
    id_prefix = "chatcmpl"

    def _chunk(self, delta: p.ChunkDelta, **choice: Any) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[p.ChunkChoice(index=0, delta=delta, **choice)]
        )

    def first(self) -> p.ChatCompletionChunk:
        return self._chunk(p.ChunkDelta(role="assistant", content=""))

    def reasoning_chunk(self, text: str) -> p.ChatCompletionChunk:
        return self._chunk(p.ChunkDelta(reasoning_content=text))

    def chunk(self, event: Event) -> p.ChatCompletionChunk:
        if isinstance(event, TextDelta):
            logprobs = p.ChoiceLogprobs(content=_token_logprobs(event.logprobs)) if self._logprobs else None
            return self._chunk(p.ChunkDelta(content=event.text), logprobs=logprobs)
        if isinstance(event, ToolCallDelta):
            function = p.ResponseFunctionCall(name=event.name or UNSET, arguments=event.arguments)
            call = p.ToolCallChunk(
                index=event.index, id=event.id or UNSET, type="function" if event.id else UNSET, function=function
            )
            return self._chunk(p.ChunkDelta(tool_calls=[call]))
        return self._chunk(p.ChunkDelta(), finish_reason=event.reason)

    def usage_chunk(self, usage: Usage) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=completion_usage(usage)
        )

    def assemble(self, events: Sequence[Event]) -> p.ChatCompletion:
        finish = _finish(events)
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        calls: dict[int, p.ResponseToolCall] = {}
        for e in events:
            if isinstance(e, ToolCallDelta):
                call = calls.setdefault(e.index, p.ResponseToolCall(id="", function=p.ResponseFunctionCall(name="")))
                call.id = e.id or call.id
                call.function.name = e.name or call.function.name
                call.function.arguments += e.arguments
        logprobs = [lp for e in events if isinstance(e, TextDelta) for lp in e.logprobs]
        message = p.ResponseMessage(content=text or (None if calls else ""), tool_calls=list(calls.values()) or UNSET)
        choice = p.ChatChoice(
            index=0,
            message=message,
            logprobs=p.ChoiceLogprobs(content=_token_logprobs(logprobs)) if self._logprobs else None,
            finish_reason=finish.reason,
        )
        return p.ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=completion_usage(finish.usage)
        )


class CompletionResponder(_Identity):
    id_prefix = "cmpl"

    def _object(self, text: str, logprobs: Sequence[TokenLogprob], finish_reason: str | None) -> p.TextCompletion:
        choice = p.CompletionChoice(
            index=0, text=text, logprobs=self._legacy_logprobs(logprobs), finish_reason=finish_reason
        )
        return p.TextCompletion(id=self.id, created=self.created, model=self.model, choices=[choice])

    def first(self) -> None:
        return None

    def chunk(self, event: Event) -> p.TextCompletion:
        if isinstance(event, Finish):
            return self._object("", (), event.reason)
        return self._object(event.text if isinstance(event, TextDelta) else event.arguments, self._of(event), None)

    def usage_chunk(self, usage: Usage) -> p.TextCompletion:
        return p.TextCompletion(
            id=self.id, created=self.created, model=self.model, choices=[], usage=completion_usage(usage)
        )

    def assemble(self, events: Sequence[Event]) -> p.TextCompletion:
        finish = _finish(events)
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        logprobs = [lp for e in events for lp in self._of(e)]
        completion = self._object(text, logprobs, finish.reason)
        completion.usage = completion_usage(finish.usage)
        return completion

    @staticmethod
    def _of(event: Event) -> Sequence[TokenLogprob]:
        return event.logprobs if isinstance(event, TextDelta) else ()

    def _legacy_logprobs(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self._logprobs:
            return None
        return {
            "tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [dict(lp.top) for lp in logprobs],
            "text_offset": [],
        }
