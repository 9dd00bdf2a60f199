"""Events to the Responses API: the response object, and its stream of named events.

A stream: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its content part (`response.content_part.added`), its deltas
(`response.output_text.delta`, `response.function_call_arguments.delta`,
`response.reasoning_text.delta` for a council's agents), their `*.done` events and
`response.output_item.done`; last `response.completed` (or `response.incomplete` when the length
ran out, or `response.failed`) with the whole response. Every event has its `sequence_number`.

The items are built as events come, here only: a non-streaming answer is the same events played
through this wire, frames unsent, so both shapes of one answer agree by construction.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import msgspec
from msgspec import UNSET, UnsetType

from gateway import protocol as p
from gateway.framing import Answer, Delta, named_frame, replay
from gateway.responses import protocol as r
from konsilium.errors import ContextLengthExceededError, GatewayError, RateLimitError
from model_store.types import Finish, TextDelta, ToolCallDelta, Usage

OnDone = Callable[[r.Response, Answer], None]


def error_code(error: GatewayError) -> str:
    """OpenAI's codes for a failed response (Codex reads `context_length_exceeded` and
    `rate_limit_exceeded`; the published schema's enum lacks the first, OpenAI sends it anyway)."""
    if isinstance(error, ContextLengthExceededError):
        return "context_length_exceeded"
    if isinstance(error, RateLimitError):
        return "rate_limit_exceeded"
    return "invalid_prompt" if error.status < 500 else "server_error"


def response_usage(usage: Usage) -> r.ResponseUsage:
    return r.ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=r.InputTokensDetails(cached_tokens=usage.cached_tokens or 0),
        output_tokens=usage.completion_tokens,
        output_tokens_details=r.OutputTokensDetails(),
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


class ResponsesWire:
    closing = b""

    def __init__(self, model: str, request: r.CreateResponse, on_done: OnDone | None = None) -> None:
        self.id = f"resp_{secrets.token_hex(16)}"
        self.created = int(time.time())
        self.model = model
        self.answer = Answer()
        self._request = request
        self._on_done = on_done
        self._seq = 0
        self._items: list[r.OutputItem] = []
        self._open: r.OutputItem | None = None
        self._parts: list[str] = []  # the open item's text or arguments, so far
        self._call = -1  # the open function call's index
        self._final: r.Response | None = None

    # ---- the Wire protocol ----------------------------------------------------------------
    def opening(self) -> bytes:
        response = self._response("in_progress")
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def reasoning(self, text: str) -> bytes:
        out = (
            b"" if isinstance(self._open, r.ReasoningOutput) else self._begin(r.ReasoningOutput(id=self._item_id("rs")))
        )
        self._parts.append(text)
        return out + self._event("response.reasoning_text.delta", **self._at(), delta=text)

    def delta(self, event: Delta) -> bytes:
        self.answer.add(event)
        if isinstance(event, TextDelta):
            out = (
                b""
                if isinstance(self._open, r.MessageOutput)
                else self._begin(r.MessageOutput(id=self._item_id("msg")))
            )
            self._parts.append(event.text)
            return out + self._event("response.output_text.delta", **self._at(), delta=event.text, logprobs=[])
        out = b""
        if event.index != self._call or not isinstance(self._open, r.FunctionCallOutput):
            call_id = event.id or f"call_{secrets.token_hex(12)}"
            self.answer.add(ToolCallDelta(index=event.index, arguments="", id=call_id))  # the id it was sent with
            out = self._begin(r.FunctionCallOutput(id=self._item_id("fc"), call_id=call_id, name=event.name or ""))
            self._call = event.index
        if not event.arguments:
            return out
        self._parts.append(event.arguments)
        return out + self._event("response.function_call_arguments.delta", **self._at(), delta=event.arguments)

    def finish(self, finish: Finish, report: p.CouncilReport | None = None) -> bytes:
        self.answer.add(finish)
        cut = finish.reason == "length"
        out = b"" if self._items or self._open else self._begin(r.MessageOutput(id=self._item_id("msg")))
        out += self._end("incomplete" if cut else "completed")
        response = self._response("incomplete" if cut else "completed", usage=response_usage(finish.usage))
        response.incomplete_details = r.IncompleteDetails(reason="max_output_tokens") if cut else None
        response.konsilium = UNSET if report is None else report
        self._final = response
        if self._on_done is not None:
            self._on_done(response, self.answer)
        return out + self._event("response.incomplete" if cut else "response.completed", response=response)

    def failure(self, error: GatewayError) -> bytes:
        """`response.failed`, after `response.created` when it failed before anything came (a
        client's stream helper wants the response it fails to have been created); the open item,
        as far as it got, is in the failed response's output as `incomplete`."""
        out = b"" if self._seq else self.opening()  # nothing sent yet: not even response.created
        if self._open is not None:
            self._fill(self._open, "".join(self._parts))
            self._open.status = "incomplete"
            self._items.append(self._open)
            self._open, self._parts = None, []
        response = self._response("failed")
        response.error = r.ResponseError(code=error_code(error), message=error.message)
        return out + self._event("response.failed", response=response)

    def body(self, answer: Answer, reasoning: str = "", report: p.CouncilReport | None = None) -> bytes:
        """The whole response: `answer` played through this wire (its frames dropped)."""
        replay(self, answer, reasoning, report)
        return p.encoder.encode(self._final)

    # ---- items -----------------------------------------------------------------------------
    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self.id.removeprefix('resp_')}{len(self._items):02d}"

    def _at(self, *, content: bool = True) -> dict[str, object]:
        assert self._open is not None
        at: dict[str, object] = {"item_id": self._open.id, "output_index": len(self._items)}
        if content and not isinstance(self._open, r.FunctionCallOutput):
            at["content_index"] = 0
        return at

    def _begin(self, item: r.OutputItem) -> bytes:
        out = self._end("completed")
        self._open = item
        out += self._event("response.output_item.added", output_index=len(self._items), item=item)
        if isinstance(item, r.MessageOutput):
            out += self._event("response.content_part.added", **self._at(), part=r.OutputText())
        elif isinstance(item, r.ReasoningOutput):
            out += self._event("response.content_part.added", **self._at(), part=r.ReasoningText())
        return out

    def _end(self, status: str) -> bytes:
        item = self._open
        if item is None:
            return b""
        text = "".join(self._parts)
        self._fill(item, text)
        if isinstance(item, r.FunctionCallOutput):
            out = self._event("response.function_call_arguments.done", **self._at(), name=item.name, arguments=text)
        else:
            done = "response.output_text.done" if isinstance(item, r.MessageOutput) else "response.reasoning_text.done"
            extra: dict[str, object] = {"logprobs": []} if isinstance(item, r.MessageOutput) else {}
            out = self._event(done, **self._at(), text=text, **extra)
            out += self._event("response.content_part.done", **self._at(), part=item.content[0])
        item.status = status
        out += self._event("response.output_item.done", output_index=len(self._items), item=item)
        self._items.append(item)
        self._open, self._parts = None, []
        return out

    @staticmethod
    def _fill(item: r.OutputItem, text: str) -> None:
        if isinstance(item, r.MessageOutput):
            item.content = [r.OutputText(text=text)]
        elif isinstance(item, r.ReasoningOutput):
            item.content = [r.ReasoningText(text=text)]
        else:
            item.arguments = text

    # ---- the response ----------------------------------------------------------------------
    def _event(self, kind: str, **fields: object) -> bytes:
        sequence, self._seq = self._seq, self._seq + 1
        return named_frame(kind, {"type": kind, "sequence_number": sequence, **fields})

    def _response(self, status: str, usage: r.ResponseUsage | UnsetType = UNSET) -> r.Response:
        request = self._request
        text_format = msgspec.to_builtins(request.text.format) if request.text else {"type": "text"}
        return r.Response(
            id=self.id,
            created_at=self.created,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=self.model,
            output=list(self._items),
            parallel_tool_calls=request.parallel_tool_calls,
            previous_response_id=request.previous_response_id,
            store=request.store,
            temperature=request.temperature,
            text={"format": text_format},
            tool_choice="auto" if isinstance(request.tool_choice, UnsetType) else request.tool_choice,
            tools=request.tools or [],
            top_p=request.top_p,
            usage=usage,
            user=request.user if request.user is not None else UNSET,
            metadata=request.metadata or {},
        )
