"""`POST /v1/chat/completions` and `POST /v1/completions`, and `answer`: the one flow every
inference door (these two, the Responses API, Anthropic's Messages API) takes.

decode + validate → convert (a `GenerationRequest`) → admit (keys and limits) → the council, or
dispatch (routing/dispatch.py: role, target, fallbacks; a failure before the first byte falls
back, or is a proper HTTP error) → frame with the door's `Wire`: an SSE stream, or one body.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post

from gateway import auth, convert, council, observe
from gateway import protocol as p
from gateway.encoded import JsonResponse
from gateway.errors import from_decode_error, too_deep
from gateway.framing import Answer, ChatResponder, CompletionResponder, Wire
from gateway.routed import route_headers, route_request
from gateway.services import Services
from gateway.sse import DisconnectWatch, SseResponse, collect, sse_stream
from konsilium.errors import InvalidRequestError
from model_store.types import GenerationRequest

Body = TypeVar("Body")
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


async def answer(
    request: AnyRequest, model: str, generation: GenerationRequest, make_wire: Callable[[str], Wire]
) -> Response[bytes]:
    """Answer `generation`, asked for as `model`, framed by the wire `make_wire(model answering)`
    builds: a council (`konsilium`, `konsilium/<name>`) or a routed, dispatched model."""
    services: Services = request.app.state.services
    generation = await auth.admit(services.tenancy, generation, services.metrics)
    record = observe.current()
    record.stream, record.model, record.request_id = generation.stream, model, request_id(request)
    watch = DisconnectWatch(request.receive)
    try:
        name = council.council_name(services, model)
        if name is not None:
            return await council.respond(request, model, generation, name, make_wire(model), watch)
        return await _dispatched(request, model, generation, make_wire, watch)
    finally:
        watch.release()


async def _dispatched(
    request: AnyRequest,
    model: str,
    generation: GenerationRequest,
    make_wire: Callable[[str], Wire],
    watch: DisconnectWatch,
) -> Response[bytes]:
    services: Services = request.app.state.services
    record = observe.current()
    route = route_request(request.headers, model, services.config.routing.ab_fraction, auth.access())
    dispatched = await watch.guard(services.dispatcher.dispatch(generation, route))
    record.role, record.model = dispatched.role.role, dispatched.target
    record.fallbacks = tuple(a.target for a in dispatched.failed)
    headers = {**route_headers(dispatched), "x-request-id": record.request_id}
    if generation.suffix is not None and (fim := services.store.view_of(services.store.base_of(dispatched.target)).fim):
        headers["x-konsilium-fim"] = fim  # native, or emulated through the chat template
    wire = make_wire(dispatched.target)
    events = dispatched.events
    if generation.stream:
        return SseResponse(sse_stream(wire, dispatched.first, events), headers, watch)
    try:
        collected = await watch.guard(collect(dispatched.first, events))
    finally:
        await events.aclose()
    return JsonResponse(wire.body(Answer.of(collected)), headers)


def request_id(request: AnyRequest) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else secrets.token_hex(16)


def include_usage(options: p.StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest) -> Response[bytes]:
    observe.current().inference = True
    body = await decode(request, p.chat_request_decoder)
    generation = convert.chat_request(body)
    logprobs, usage = bool(body.logprobs), include_usage(body.stream_options)
    return await answer(
        request, body.model, generation, lambda model: ChatResponder(model, logprobs=logprobs, include_usage=usage)
    )


@post("/v1/completions", status_code=200)
async def completions(request: AnyRequest) -> Response[bytes]:
    observe.current().inference = True
    body = await decode(request, p.completion_request_decoder)
    if council.council_name(request.app.state.services, body.model) is not None:
        raise InvalidRequestError(
            "A council answers chat: send it to /v1/chat/completions (a text completion has no conversation to weigh).",
            param="model",
        )
    generation = convert.completion_request(body)
    logprobs, usage = body.logprobs is not None, include_usage(body.stream_options)
    return await answer(
        request,
        body.model,
        generation,
        lambda model: CompletionResponder(model, logprobs=logprobs, include_usage=usage),
    )
