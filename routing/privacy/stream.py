"""The privacy filter on the request path: a request scrubbed field by field on its way to a
cloud target, and the target's events restored on their way back.

Every text a model reads is scrubbed — message contents and names, tool-call arguments the
conversation carries, tool descriptions and every string of their parameters' schemas, the
response format's schema, stop strings, the completion prompt and suffix — with one vault, so a value that
appears twice has one placeholder. Restoring is per stream: text deltas through one restorer,
each tool call's arguments through their own (a placeholder split across chunks is held back
until it completes); what a restorer holds is released before the event that ends its run, so
nothing is lost and nothing comes out of order.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import msgspec

from model_store.notices import StoreEvent
from model_store.types import Finish, GenerationRequest, JsonOutput, Message, TextDelta, ToolCallDelta, ToolSpec
from routing.privacy.scrubber import Restorer, Vault


def scrub_request(vault: Vault, request: GenerationRequest) -> GenerationRequest:
    json_output = request.json_output
    if json_output is not None and json_output.schema is not None:
        json_output = JsonOutput(schema=_scrub_schema(vault, json_output.schema))
    return msgspec.structs.replace(
        request,
        messages=tuple(_scrub_message(vault, m) for m in request.messages),
        prompt=vault.scrub(request.prompt),
        suffix=None if request.suffix is None else vault.scrub(request.suffix),
        stop=tuple(vault.scrub(s) for s in request.stop),
        tools=tuple(_scrub_tool(vault, t) for t in request.tools),
        json_output=json_output,
    )


def _scrub_message(vault: Vault, message: Message) -> Message:
    calls = tuple(msgspec.structs.replace(c, arguments=vault.scrub(c.arguments)) for c in message.tool_calls)
    name = None if message.name is None else vault.scrub(message.name)
    return msgspec.structs.replace(message, content=vault.scrub(message.content), name=name, tool_calls=calls)


def _scrub_tool(vault: Vault, tool: ToolSpec) -> ToolSpec:
    """Its description and every string in its parameters' schema (descriptions, enums, defaults,
    examples); never its name or a property's name, which the answer's call must match."""
    parameters = None if tool.parameters is None else _scrub_schema(vault, tool.parameters)
    return msgspec.structs.replace(tool, description=vault.scrub(tool.description), parameters=parameters)


def _scrub_schema(vault: Vault, schema: dict[str, object]) -> dict[str, object]:
    """Every string value in a JSON schema, at any depth; keys stay (property names are the
    answer's keys). Iterative: a schema is bounded (gateway/schemas.py) but may be deep."""
    out = dict(schema)
    stack: list[dict[str, object] | list[object]] = [out]
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, value in items:
            if isinstance(value, str):
                node[key] = vault.scrub(value)  # type: ignore[index]
            elif isinstance(value, dict | list):
                copy: dict[str, object] | list[object] = dict(value) if isinstance(value, dict) else list(value)
                node[key] = copy  # type: ignore[index]
                stack.append(copy)
    return out


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
                if tail := text.flush():  # text before a call goes out before it
                    yield TextDelta(text=tail)
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
