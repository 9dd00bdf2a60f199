"""Events to Anthropic's Messages API: the message object, and its stream of named events.

A stream: `message_start` (the message, empty), `ping`, then per content block
`content_block_start`, its `content_block_delta`s (`text_delta`; `input_json_delta` for a tool
call's arguments; `thinking_delta` for a council's agents) and `content_block_stop`; then
`message_delta` (`stop_reason`, usage) and `message_stop`. A failure after the first byte is an
`error` event in Anthropic's shape.

The content blocks are built as events come, here only: a non-streaming answer is the same
events played through this wire, frames unsent.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from gateway import protocol as p
from gateway.errors import anthropic_error
from gateway.framing import Answer, Delta, named_frame, replay
from konsilium.errors import GatewayError
from model_store.types import Finish, TextDelta

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` is; text that is not a JSON object
    (a free-text tool's, a model's broken JSON) is kept whole under `arguments`."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}


class MessagesWire:
    closing = b""

    def __init__(self, model: str, prompt_tokens: int) -> None:
        self.id = f"msg_{secrets.token_hex(16)}"
        self.model = model
        self._prompt_tokens = prompt_tokens  # the estimate `message_start` shows; `message_delta` has the count
        self._blocks: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._parts: list[str] = []
        self._call = -1  # the open tool_use block's call index
        self._final: dict[str, Any] | None = None

    def opening(self) -> bytes:
        message = self._message(stop_reason=None, usage={"input_tokens": self._prompt_tokens, "output_tokens": 0})
        return named_frame("message_start", {"type": "message_start", "message": message}) + named_frame(
            "ping", {"type": "ping"}
        )

    def reasoning(self, text: str) -> bytes:
        out = b"" if self._is_open("thinking") else self._begin({"type": "thinking", "thinking": "", "signature": ""})
        return out + self._delta({"type": "thinking_delta", "thinking": text}, text)

    def delta(self, event: Delta) -> bytes:
        if isinstance(event, TextDelta):
            out = b"" if self._is_open("text") else self._begin({"type": "text", "text": ""})
            return out + self._delta({"type": "text_delta", "text": event.text}, event.text)
        out = b""
        if event.index != self._call or not self._is_open("tool_use"):
            call_id = event.id or f"toolu_{secrets.token_hex(12)}"
            out = self._begin({"type": "tool_use", "id": call_id, "name": event.name or "", "input": {}})
            self._call = event.index
        if not event.arguments:
            return out
        return out + self._delta({"type": "input_json_delta", "partial_json": event.arguments}, event.arguments)

    def finish(self, finish: Finish, report: p.CouncilReport | None = None) -> bytes:
        out = b"" if self._blocks or self._open else self._begin({"type": "text", "text": ""})  # an empty answer
        out += self._end()
        usage = {"input_tokens": finish.usage.prompt_tokens, "output_tokens": finish.usage.completion_tokens}
        if finish.usage.cached_tokens is not None:
            usage["cache_read_input_tokens"] = finish.usage.cached_tokens
        stop_reason = STOP_REASONS[finish.reason]
        self._final = self._message(stop_reason=stop_reason, usage=usage)
        if report is not None:
            self._final["konsilium"] = report  # extension: a council's report
        delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
        delta["usage"] = usage
        if report is not None:
            delta["konsilium"] = report
        return out + named_frame("message_delta", delta) + named_frame("message_stop", {"type": "message_stop"})

    def failure(self, error: GatewayError) -> bytes:
        return named_frame("error", anthropic_error(error))

    def body(self, answer: Answer, reasoning: str = "", report: p.CouncilReport | None = None) -> bytes:
        """The whole message: `answer` played through this wire (its frames dropped)."""
        replay(self, answer, reasoning, report)
        return p.encoder.encode(self._final)

    def _is_open(self, kind: str) -> bool:
        return self._open is not None and self._open["type"] == kind

    def _begin(self, block: dict[str, Any]) -> bytes:
        out = self._end()
        self._open = block
        start = {"type": "content_block_start", "index": len(self._blocks), "content_block": block}
        return out + named_frame("content_block_start", start)

    def _delta(self, delta: dict[str, str], part: str) -> bytes:
        self._parts.append(part)
        return named_frame(
            "content_block_delta", {"type": "content_block_delta", "index": len(self._blocks), "delta": delta}
        )

    def _end(self) -> bytes:
        block = self._open
        if block is None:
            return b""
        text = "".join(self._parts)
        if block["type"] == "tool_use":
            block["input"] = tool_input(text)
        else:
            block[block["type"]] = text  # "text" or "thinking"
        out = named_frame("content_block_stop", {"type": "content_block_stop", "index": len(self._blocks)})
        self._blocks.append(block)
        self._open, self._parts = None, []
        return out

    def _message(self, *, stop_reason: str | None, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": list(self._blocks),
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
