"""The privacy filter on the request path: a request scrubbed field by field on its way to a
cloud target, and the target's events restored on their way back.

Every text a model reads is scrubbed — message contents, tool-call arguments the conversation
carries, tool descriptions, the completion prompt and suffix — with one vault, so a value that
appears twice has one placeholder. Restoring is per stream: text deltas through one restorer,
each tool call's arguments through their own (a placeholder split across chunks is held back
until it completes); what a restorer holds is released before the event that ends its run, so
nothing is lost and nothing comes out of order.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import msgspec

from model_store.store import StoreEvent
from model_store.types import Finish, GenerationRequest, Message, TextDelta, ToolCallDelta, ToolSpec
from routing.privacy.scrubber import Restorer, Vault


def scrub_request(vault: Vault, request: GenerationRequest) -> GenerationRequest:
    return msgspec.structs.replace(
        request,
        messages=tuple(_scrub_message(vault, m) for m in request.messages),
        prompt=vault.scrub(request.prompt),
        suffix=None if request.suffix is None else vault.scrub(request.suffix),
        tools=tuple(_scrub_tool(vault, t) for t in request.tools),
    )


def _scrub_message(vault: Vault, message: Message) -> Message:
    calls = tuple(msgspec.structs.replace(c, arguments=vault.scrub(c.arguments)) for c in message.tool_calls)
    return msgspec.structs.replace(message, content=vault.scrub(message.content), tool_calls=calls)


def _scrub_tool(vault: Vault, tool: ToolSpec) -> ToolSpec:
    return msgspec.structs.replace(tool, description=vault.scrub(tool.description))


async def restored(vault: Vault, events: AsyncGenerator[StoreEvent, None]) -> AsyncGenerator[StoreEvent, None]:
    text = vault.restorer()
    calls: dict[int, Restorer] = {}
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                out = text.feed(event.text)
                if out or event.logprobs:
                    yield msgspec.structs.replace(event, text=out)
            elif isinstance(event, ToolCallDelta):
                for held in _release_others(calls, event.index):
                    yield held
                restorer = calls.setdefault(event.index, vault.restorer())
                yield msgspec.structs.replace(event, arguments=restorer.feed(event.arguments))
            else:
                if isinstance(event, Finish):
                    for held in _release(text, calls):
                        yield held
                yield event
    finally:
        await events.aclose()


def _release_others(calls: dict[int, Restorer], index: int) -> list[StoreEvent]:
    """A new tool call began: the earlier calls' held tails go out first."""
    return [ToolCallDelta(index=i, arguments=tail) for i, r in calls.items() if i != index and (tail := r.flush())]


def _release(text: Restorer, calls: dict[int, Restorer]) -> list[StoreEvent]:
    out: list[StoreEvent] = [TextDelta(text=tail)] if (tail := text.flush()) else []
    return out + _release_others(calls, -1)
