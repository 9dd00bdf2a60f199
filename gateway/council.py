"""`"model": "konsilium"` (or `konsilium/<name>`) on any chat door: the council's answer.

The council's events (routing/council) become one answer, framed by the door's `Wire`.
Streaming: the agents' answers as reasoning while they arrive (chat's `reasoning_content`
deltas), one labelled block per agent (council_text.py), then the Director's answer as content,
its finish carrying the `konsilium` report and usage (every call's, summed); SSE comments keep
the connection alive while nothing is written. Non-streaming: the verdict as the content, the
agents' blocks as reasoning, `konsilium` beside it.

Headers go out before the body, so a stream's name the council and its seats; a non-streaming
answer's name who answered as well (`x-konsilium-director`, `x-konsilium-agents`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import msgspec
from litestar import Request, Response

from gateway import auth, observe
from gateway import protocol as p
from gateway.council_text import Lanes, ending, heading
from gateway.encoded import JsonResponse
from gateway.errors import to_gateway_error
from gateway.framing import Answer, Wire, completion_usage
from gateway.routed import route_request
from gateway.services import Services
from gateway.sse import DisconnectWatch, SseResponse, ended_early, paced
from konsilium.config import DEFAULT_COUNCIL, Config, CouncilConfig
from konsilium.errors import ModelNotFoundError
from model_store.types import Finish, GenerationRequest, TextDelta, ToolCallDelta
from routing.council.reports import (
    AgentDone,
    AgentOpened,
    AgentText,
    CallReport,
    CouncilDone,
    CouncilEvent,
    CouncilSummary,
    Ranked,
)

PREFIX = "konsilium"
AnyRequest = Request[Any, Any, Any]


def council_name(services: Services, model: str) -> str | None:
    """The council a `model` names: `konsilium` is the default one, `konsilium/<name>` another —
    unless a model of that name is configured (a model id may hold a `/`)."""
    if services.store.knows(model):
        return None
    if model == PREFIX:
        return DEFAULT_COUNCIL
    name = model.removeprefix(f"{PREFIX}/")
    return name if name != model else None


async def respond(
    request: AnyRequest, model: str, generation: GenerationRequest, name: str, wire: Wire, watch: DisconnectWatch
) -> Response[bytes]:
    services: Services = request.app.state.services
    council = _council(services.config, name, model)
    record = observe.current()
    record.role, record.route = "council", f"council:{name}"
    route = route_request(request.headers, model, services.config.routing.ab_fraction, auth.access())
    events = services.council.convene(name, council, generation, route)
    headers = {
        "x-request-id": record.request_id,
        "x-konsilium-council": name,
        "x-konsilium-agents": ",".join(s.role for s in council.seats()),
    }
    if not generation.stream:
        collected = await watch.guard(_collect(events))
        summary = _summary(collected)
        _record(summary)
        return JsonResponse(_body(wire, collected, summary), {**headers, **_answered_headers(summary)})
    try:  # until one agent answers: a council that cannot start is an HTTP error, not a stream
        opening = await watch.guard(_opening(events))
    except BaseException:
        await events.aclose()
        raise
    stream = _sse(wire, opening, events)
    return SseResponse(stream, headers, watch)


def _council(config: Config, name: str, model: str) -> CouncilConfig:
    council = config.council(name)
    if council is None:
        known = ", ".join(["konsilium", *(f"{PREFIX}/{n}" for n in config.councils if n != DEFAULT_COUNCIL)])
        raise ModelNotFoundError(f"The model {model!r} does not exist: no council {name!r} ({known}).", param="model")
    return council


async def _opening(events: AsyncGenerator[CouncilEvent, None]) -> list[CouncilEvent]:
    """The council's events up to the first agent's first token (agents that failed before it
    included); it raises when no agent answers."""
    opening: list[CouncilEvent] = []
    async for event in events:
        opening.append(event)
        if not isinstance(event, AgentDone):
            break
    return opening


async def _collect(events: AsyncGenerator[CouncilEvent, None]) -> list[CouncilEvent]:
    try:
        return [event async for event in events]
    finally:
        await events.aclose()


def _summary(events: Sequence[CouncilEvent]) -> CouncilSummary:
    done = events[-1]
    assert isinstance(done, CouncilDone), "a council that ends without failing ends with CouncilDone"
    return done.summary


def _record(summary: CouncilSummary) -> None:
    record = observe.current()
    record.model = summary.director.model or ""
    record.prompt_tokens, record.completion_tokens = summary.usage.prompt_tokens, summary.usage.completion_tokens


def _body(wire: Wire, events: Sequence[CouncilEvent], summary: CouncilSummary) -> bytes:
    """Agents' blocks in seat order (the whole answers are known), then the Director's answer."""
    opened = {e.role: e for e in events if isinstance(e, AgentOpened)}
    blocks = [_block(e, opened.get(e.report.role)) for e in events if isinstance(e, AgentDone)]
    order = {r.role: i for i, r in enumerate(summary.agents)}
    blocks.sort(key=lambda block: order[block[0]])
    ranked = next((e for e in events if isinstance(e, Ranked)), None)
    verdict = Answer.of(e for e in events if isinstance(e, TextDelta | ToolCallDelta))
    verdict.add(_counted(events, summary))
    reasoning = "".join(b for _, b in blocks) + _ranking_block(ranked)
    return wire.body(verdict, reasoning, report(summary))


def _counted(events: Sequence[CouncilEvent], summary: CouncilSummary) -> Finish:
    """The Director's finish, with every call's usage summed."""
    finish = next((e for e in events if isinstance(e, Finish)), None)
    if finish is None:
        raise ended_early()
    return Finish(reason=finish.reason, usage=summary.usage)


def _block(done: AgentDone, opened: AgentOpened | None) -> tuple[str, str]:
    role = done.report.role
    head = heading(role, opened.model, opened.adapter) if opened else f"### {role}"
    return role, head + done.text + ending(done.report)


def _ranking_block(ranked: Ranked | None) -> str:
    if ranked is None or not ranked.ranking:
        return ""
    return f"### ranking\n\n{', '.join(ranked.ranking)}\n\n"


async def _sse(
    wire: Wire, opening: Sequence[CouncilEvent], events: AsyncGenerator[CouncilEvent, None]
) -> AsyncGenerator[bytes, None]:
    lanes = Lanes()
    finish: Finish | None = None
    yield wire.opening()
    council = _chained(opening, paced(events, "the council is thinking"))
    try:
        async for event in council:
            if isinstance(event, bytes):
                yield event
            elif isinstance(event, CouncilDone):
                if finish is None:
                    raise ended_early()
                _record(event.summary)
                yield wire.finish(Finish(reason=finish.reason, usage=event.summary.usage), report(event.summary))
            elif isinstance(event, Finish):
                finish = event  # sent with the council's report, once every call is counted
            elif isinstance(event, TextDelta | ToolCallDelta):
                yield wire.delta(event)
            elif text := _reasoning(lanes, event):
                yield wire.reasoning(text)
    except Exception as exc:  # after the first byte every failure becomes the wire's failure frame
        yield wire.failure(to_gateway_error(exc))
    finally:  # a client that left: the council's calls are cancelled now, not when collected
        await council.aclose()
    yield wire.closing


async def _chained(
    opening: Sequence[CouncilEvent], rest: AsyncGenerator[CouncilEvent | bytes, None]
) -> AsyncGenerator[CouncilEvent | bytes, None]:
    try:
        for event in opening:
            yield event
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


def _reasoning(lanes: Lanes, event: CouncilEvent) -> str:
    if isinstance(event, AgentOpened):
        return lanes.opened(event)
    if isinstance(event, AgentText):
        return lanes.text(event.role, event.text)
    if isinstance(event, AgentDone):
        return lanes.done(event)
    if isinstance(event, Ranked):
        return _ranking_block(event)
    return ""  # VerdictOpened: the Director's text follows as content


def report(summary: CouncilSummary) -> p.CouncilReport:
    return p.CouncilReport(
        council=summary.council,
        agents=[_call(r) for r in summary.agents],
        director=_call(summary.director),
        ranking=list(summary.ranking),
        rankers=[_call(r) for r in summary.rankers],
    )


def _call(r: CallReport) -> p.CouncilCall:
    fields = msgspec.structs.asdict(r) | {
        "usage": None if r.usage is None else completion_usage(r.usage),
        "fallbacks": list(r.fallbacks),
    }
    return p.CouncilCall(**fields)


def _answered_headers(summary: CouncilSummary) -> Mapping[str, str]:
    director = summary.director
    agents = ",".join(
        f"{r.role}={r.adapter or r.model}" if r.status == "ok" else f"{r.role}={r.status}" for r in summary.agents
    )
    return {
        "x-konsilium-model": director.adapter or director.model or "",
        "x-konsilium-director": director.adapter or director.model or "",
        "x-konsilium-fallbacks": ",".join(director.fallbacks),
        "x-konsilium-agents": agents,
    }
