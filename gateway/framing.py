"""Events to wire objects: one `Wire` per API (chat, text completions, Responses, Messages).

A `Wire` knows its response's ids and model name. For a stream it turns each event into the
bytes that API sends (`opening`, `reasoning`, `delta`, `finish`, `failure`, `closing`); for a
non-streaming request, `body` renders the `Answer` the events fold into — `Answer` is the one
place an answer is assembled, whichever API asked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from msgspec import UNSET

from gateway import protocol as p
from gateway.errors import error_object
from konsilium.errors import GatewayError
from model_store.types import Event, Finish, TextDelta, TokenLogprob, ToolCall, ToolCallDelta, Usage

DONE = b"data: [DONE]\n\n"
Delta = TextDelta | ToolCallDelta


def frame(obj: object) -> bytes:
    """An OpenAI SSE frame: one line of JSON (clients parse every `data:` line alone)."""
    return b"data: " + p.encoder.encode(obj) + b"\n\n"


def named_frame(name: str, obj: object) -> bytes:
    """An SSE frame with an `event:` line, as the Responses and Messages APIs send them."""
    return b"event: " + name.encode() + b"\ndata: " + p.encoder.encode(obj) + b"\n\n"


class Answer:
    """A whole answer, folded from its events: text, tool calls (by index), logprobs, the finish."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, list[str]] = {}  # index → [id, name, arguments]
        self.logprobs: list[TokenLogprob] = []
        self.finish: Finish | None = None

    @classmethod
    def of(cls, events: Iterable[Event]) -> Answer:
        answer = cls()
        for event in events:
            answer.add(event)
        return answer

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._text.append(event.text)
            self.logprobs += event.logprobs
        elif isinstance(event, ToolCallDelta):
            call = self._calls.setdefault(event.index, ["", "", ""])
            call[0], call[1] = event.id or call[0], event.name or call[1]
            call[2] += event.arguments
        else:
            self.finish = event

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(id=c[0], name=c[1], arguments=c[2]) for c in self._calls.values()]

    @property
    def ended(self) -> Finish:
        assert self.finish is not None, "a finished stream always ends with Finish"
        return self.finish


class Wire(Protocol):
    closing: bytes  # after the last frame, also after a failure

    def opening(self) -> bytes: ...

    def reasoning(self, text: str) -> bytes: ...  # a council's agents, before the verdict

    def delta(self, event: Delta) -> bytes: ...

    def finish(self, finish: Finish, report: p.CouncilReport | None = None) -> bytes: ...

    def failure(self, error: GatewayError) -> bytes: ...

    def body(self, answer: Answer, reasoning: str = "", report: p.CouncilReport | None = None) -> bytes: ...


def replay(wire: Wire, answer: Answer, reasoning: str = "", report: p.CouncilReport | None = None) -> None:
    """Play a whole answer through a streaming `wire`, its frames dropped: a wire that builds its
    answer as events come (Responses, Messages) builds a non-streaming one the same way."""
    if reasoning:
        wire.reasoning(reasoning)
    if answer.text:
        wire.delta(TextDelta(text=answer.text))
    for index, call in enumerate(answer.tool_calls):
        wire.delta(ToolCallDelta(index=index, arguments=call.arguments, id=call.id, name=call.name))
    wire.finish(answer.ended, report)


def completion_usage(usage: Usage) -> p.CompletionUsage:
    cached = usage.cached_tokens
    return p.CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=UNSET if cached is None else p.PromptTokensDetails(cached_tokens=cached),
    )


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


class _OpenAIWire:
    """Chat and text completions: `data:` frames, an error frame on failure, then `[DONE]`. Every
    object of one response shares its id, creation time and model name."""

    closing = DONE
    id_prefix = ""

    def __init__(self, model: str, *, logprobs: bool = False, include_usage: bool = False) -> None:
        self.id = f"{self.id_prefix}-{secrets.token_hex(16)}"
        self.created = int(time.time())
        self.model = model
        self._logprobs = logprobs
        self._include_usage = include_usage

    def failure(self, error: GatewayError) -> bytes:
        return frame(error_object(error))

    def _usage_frame(self, usage: Usage) -> bytes:
        return frame(self._usage_object(usage)) if self._include_usage else b""

    def _usage_object(self, usage: Usage) -> object:
        raise NotImplementedError


class ChatResponder(_OpenAIWire):
    id_prefix = "chatcmpl"

    def _chunk(self, delta: p.ChunkDelta, **choice: Any) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[p.ChunkChoice(index=0, delta=delta, **choice)]
        )

    def opening(self) -> bytes:
        return frame(self._chunk(p.ChunkDelta(role="assistant", content="")))

    def reasoning(self, text: str) -> bytes:
        return frame(self._chunk(p.ChunkDelta(reasoning_content=text)))

    def delta(self, event: Delta) -> bytes:
        if isinstance(event, TextDelta):
            logprobs = p.ChoiceLogprobs(content=_token_logprobs(event.logprobs)) if self._logprobs else None
            return frame(self._chunk(p.ChunkDelta(content=event.text), logprobs=logprobs))
        function = p.ResponseFunctionCall(name=event.name or UNSET, arguments=event.arguments)
        call = p.ToolCallChunk(
            index=event.index, id=event.id or UNSET, type="function" if event.id else UNSET, function=function
        )
        return frame(self._chunk(p.ChunkDelta(tool_calls=[call])))

    def finish(self, finish: Finish, report: p.CouncilReport | None = None) -> bytes:
        last = self._chunk(p.ChunkDelta(), finish_reason=finish.reason)
        last.konsilium = UNSET if report is None else report
        return frame(last) + self._usage_frame(finish.usage)

    def _usage_object(self, usage: Usage) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=completion_usage(usage)
        )

    def body(self, answer: Answer, reasoning: str = "", report: p.CouncilReport | None = None) -> bytes:
        finish, calls = answer.ended, answer.tool_calls
        tool_calls = [
            p.ResponseToolCall(id=c.id, function=p.ResponseFunctionCall(name=c.name, arguments=c.arguments))
            for c in calls
        ]
        message = p.ResponseMessage(
            content=answer.text or (None if calls else ""),
            tool_calls=tool_calls or UNSET,
            reasoning_content=reasoning or UNSET,
        )
        choice = p.ChatChoice(
            index=0,
            message=message,
            logprobs=p.ChoiceLogprobs(content=_token_logprobs(answer.logprobs)) if self._logprobs else None,
            finish_reason=finish.reason,
        )
        completion = p.ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=completion_usage(finish.usage),
            konsilium=UNSET if report is None else report,
        )
        return p.encoder.encode(completion)


class CompletionResponder(_OpenAIWire):
    id_prefix = "cmpl"

    def _object(self, text: str, logprobs: Sequence[TokenLogprob], finish_reason: str | None) -> p.TextCompletion:
        choice = p.CompletionChoice(
            index=0, text=text, logprobs=self._legacy_logprobs(logprobs), finish_reason=finish_reason
        )
        return p.TextCompletion(id=self.id, created=self.created, model=self.model, choices=[choice])

    def opening(self) -> bytes:
        return b""

    def reasoning(self, text: str) -> bytes:
        return b""

    def delta(self, event: Delta) -> bytes:
        if isinstance(event, TextDelta):
            return frame(self._object(event.text, event.logprobs, None))
        return frame(self._object(event.arguments, (), None))

    def finish(self, finish: Finish, report: p.CouncilReport | None = None) -> bytes:
        return frame(self._object("", (), finish.reason)) + self._usage_frame(finish.usage)

    def _usage_object(self, usage: Usage) -> p.TextCompletion:
        return p.TextCompletion(
            id=self.id, created=self.created, model=self.model, choices=[], usage=completion_usage(usage)
        )

    def body(self, answer: Answer, reasoning: str = "", report: p.CouncilReport | None = None) -> bytes:
        completion = self._object(answer.text, answer.logprobs, answer.ended.reason)
        completion.usage = completion_usage(answer.ended.usage)
        return p.encoder.encode(completion)

    def _legacy_logprobs(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self._logprobs:
            return None
        return {
            "tokens": [lp.token for lp in logprobs],
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [dict(lp.top) for lp in logprobs],
            "text_offset": [],
        }
