"""`POST /v1/chat/completions` and `POST /v1/completions`: one flow for both.

decode + validate → GenerationRequest → route (role, target, fallbacks) → open the first target
that answers (so a failure before the first byte falls back, or is a proper HTTP error) → SSE
stream, or the assembled JSON.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from gateway import convert, observe
from gateway import protocol as p
from gateway.errors import from_decode_error, too_deep
from gateway.framing import ChatResponder, CompletionResponder, Responder
from gateway.routed import (
    estimate_tokens,
    facts,
    is_routed_model,
    route_headers,
    short_answer,
    texts,
    wants,
    with_defaults,
)
from gateway.services import Services
from gateway.sse import collect, sse_stream, unless_disconnected
from konsilium.errors import ContextLengthExceededError, ModelNotFoundError
from model_store.store import StoreEvent
from model_store.types import GenerationRequest
from routing.policy import RouteDecision
from routing.roles import RoleDecision
from routing.router import AllTargetsFailedError

Body = TypeVar("Body", p.ChatCompletionRequest, p.CompletionRequest)
AnyRequest = Request[Any, Any, Any]

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def decode(request: AnyRequest, decoder: msgspec.json.Decoder[Body]) -> Body:
    raw = await request.body()
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from exc
    except RecursionError as exc:
        raise too_deep(exc) from None


async def respond(
    request: AnyRequest,
    body: p.ChatCompletionRequest | p.CompletionRequest,
    generation: GenerationRequest,
    make_responder: Callable[[str], Responder],
) -> Response[bytes] | Stream:
    services: Services = request.app.state.services
    store, router = services.store, services.router
    record = observe.current()
    record.stream, record.model, record.request_id = bool(body.stream), body.model, request_id(request)
    role, decision = await route(services, request, body.model, generation)
    record.role = role.role
    if decision.target is None:
        why = "; ".join(f"{s.target}: {s.why}" for s in decision.skipped)
        if decision.too_long:
            raise ContextLengthExceededError(
                f"The prompt is too long for every model that could answer: {why}",
                param="messages" if generation.kind == "chat" else "prompt",
            )
        raise AllTargetsFailedError(f"no target can serve this request: {why}", retry_after=5)

    def open_target(target: str) -> AsyncGenerator[StoreEvent, None]:
        events = store.stream(target, with_defaults(generation, router.target_defaults(role.role, target)))
        return observe.attempt(target, generation, events, services)

    opened = await unless_disconnected(request.receive, router.open_first(decision, open_target))
    record.model, record.fallbacks = opened.target, tuple(a.target for a in opened.failed)
    headers = {**route_headers(role, decision, opened.target, opened.failed), "x-request-id": record.request_id}
    responder = make_responder(opened.target)
    events = opened.events
    try:
        if not body.stream:
            answer = await unless_disconnected(request.receive, collect(opened.first, events))
            content = p.encoder.encode(responder.assemble(answer))
            return Response(content=content, media_type="application/json", headers=headers)
    except BaseException:
        await events.aclose()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = sse_stream(responder, opened.first, events, include_usage=include_usage)
    return Stream(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})


async def route(
    services: Services, request: AnyRequest, model: str, generation: GenerationRequest
) -> tuple[RoleDecision, RouteDecision]:
    store, router = services.store, services.router
    explicit = store.knows(model)
    if not explicit and not is_routed_model(router, model):
        raise ModelNotFoundError(f"The model {model!r} does not exist.", param="model")
    user_text, system_text = texts(generation)
    started = time.time_ns()
    role, decision = router.decide(
        await facts(store, generation),
        model=model,
        explicit=explicit,
        user_text=user_text,
        system_text=system_text,
        prompt_tokens=estimate_tokens(generation),
        max_tokens=generation.max_tokens,
        short_answer=short_answer(generation),
        **wants(request, services.config.routing.ab_fraction),
    )
    observe.route_span(started, role, decision)
    return role, decision


def request_id(request: AnyRequest) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest) -> Response[bytes] | Stream:
    observe.current().inference = True
    body = await decode(request, p.chat_request_decoder)
    generation = convert.chat_request(body)
    logprobs = bool(body.logprobs)
    return await respond(request, body, generation, lambda model: ChatResponder(model, logprobs=logprobs))


@post("/v1/completions", status_code=200)
async def completions(request: AnyRequest) -> Response[bytes] | Stream:
    observe.current().inference = True
    body = await decode(request, p.completion_request_decoder)
    generation = convert.completion_request(body)
    logprobs = body.logprobs is not None
    return await respond(request, body, generation, lambda model: CompletionResponder(model, logprobs=logprobs))
