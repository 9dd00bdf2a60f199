"""`POST /v1/chat/completions` and `POST /v1/completions`: one flow for both.

decode + validate → convert (GenerationRequest, RouteRequest) → dispatch (routing/dispatch.py:
role, target, fallbacks; a failure before the first byte falls back, or is a proper HTTP error)
→ frame: an SSE stream, or the assembled JSON.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from gateway import auth, convert, council, observe
from gateway import protocol as p
from gateway.errors import from_decode_error, too_deep
from gateway.framing import ChatResponder, CompletionResponder, Responder
from gateway.routed import route_headers, route_request
from gateway.services import Services
from gateway.sse import SSE_HEADERS, collect, sse_stream, unless_disconnected
from konsilium.errors import InvalidRequestError
from model_store.types import GenerationRequest

Body = TypeVar("Body", p.ChatCompletionRequest, p.CompletionRequest)
AnyRequest = Request[Any, Any, Any]

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def decode(request: AnyRequest, decoder: msgspec.json.Decoder[Body]) -> Body:
    raw = await request.body()
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from exc
    except RecursionError:
        raise too_deep() from None


async def respond(
    request: AnyRequest,
    body: p.ChatCompletionRequest | p.CompletionRequest,
    generation: GenerationRequest,
    make_responder: Callable[[str], Responder],
) -> Response[bytes] | Stream:
    services: Services = request.app.state.services
    record = observe.current()
    record.stream, record.model, record.request_id = bool(body.stream), body.model, request_id(request)
    route = route_request(request.headers, body.model, services.config.routing.ab_fraction, auth.access())
    dispatched = await unless_disconnected(request.receive, services.dispatcher.dispatch(generation, route))
    record.role, record.model = dispatched.role.role, dispatched.target
    record.fallbacks = tuple(a.target for a in dispatched.failed)
    headers = {**route_headers(dispatched), "x-request-id": record.request_id}
    responder = make_responder(dispatched.target)
    events = dispatched.events
    try:
        if not body.stream:
            answer = await unless_disconnected(request.receive, collect(dispatched.first, events))
            content = p.encoder.encode(responder.assemble(answer))
            return Response(content=content, media_type="application/json", headers=headers)
    except BaseException:
        await events.aclose()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = sse_stream(responder, dispatched.first, events, include_usage=include_usage)
    return Stream(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})


def request_id(request: AnyRequest) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest) -> Response[bytes] | Stream:
    observe.current().inference = True
    body = await decode(request, p.chat_request_decoder)
    generation = convert.chat_request(body)
    services: Services = request.app.state.services
    generation = await auth.admit(services.tenancy, generation, services.metrics)
    name = council.council_name(services, body.model)
    if name is not None:
        record = observe.current()
        record.stream, record.model, record.request_id = bool(body.stream), body.model, request_id(request)
        return await council.respond(request, body, generation, name, record.request_id)
    logprobs = bool(body.logprobs)
    return await respond(request, body, generation, lambda model: ChatResponder(model, logprobs=logprobs))


@post("/v1/completions", status_code=200)
async def completions(request: AnyRequest) -> Response[bytes] | Stream:
    observe.current().inference = True
    body = await decode(request, p.completion_request_decoder)
    if council.council_name(request.app.state.services, body.model) is not None:
        raise InvalidRequestError(
            "A council answers chat: send it to /v1/chat/completions (a text completion has no conversation to weigh).",
            param="model",
        )
    generation = convert.completion_request(body)
    services: Services = request.app.state.services
    generation = await auth.admit(services.tenancy, generation, services.metrics)
    logprobs = body.logprobs is not None
    return await respond(request, body, generation, lambda model: CompletionResponder(model, logprobs=logprobs))
