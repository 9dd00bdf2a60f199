"""`POST /v1/embeddings`.

decode + validate (`input` item by item) → admit (the key's limits: the inputs' tokens, nothing
generated) → the dispatcher (the model the request names, of the embedding kind, with the key's
allow-list and the cloud rules) → the store (queue, slots, loading, as any request) → OpenAI's
list, floats or base64. Counted and logged as an inference request; `usage` is what the key is
charged.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from gateway import auth, observe
from gateway import protocol as p
from gateway.completions import decode, request_id
from gateway.embeddings import convert
from gateway.embeddings.protocol import request_decoder
from gateway.encoded import JsonResponse
from gateway.routed import route_request
from gateway.services import Services
from gateway.sse import DisconnectWatch
from konsilium.errors import GatewayError

AnyRequest = Request[Any, Any, Any]


@post("/v1/embeddings", status_code=200)
async def create_embeddings(request: AnyRequest) -> Response[bytes]:
    record = observe.current()
    record.inference = True
    body = await decode(request, request_decoder)
    embedding = convert.embedding_request(body)
    services: Services = request.app.state.services
    await auth.admit_tokens(services.tenancy, convert.estimated_tokens(embedding), services.metrics)
    record.model, record.request_id = body.model, request_id(request)
    route = route_request(request.headers, body.model, 0.0, auth.access())
    watch = DisconnectWatch(request.receive)
    try:
        with observe.embedding_span(body.model, embedding.count) as span:
            embedded = await watch.guard(services.dispatcher.embed(embedding, route))
            observe.embedded(span, services.metrics, embedded)
    except GatewayError as exc:
        record.error = exc.code
        raise
    finally:
        watch.release()
    answer = convert.response(embedded.embeddings, embedded.target, body.encoding_format)
    headers = {"x-konsilium-model": embedded.target, "x-request-id": record.request_id}
    return JsonResponse(p.encoder.encode(answer), headers)
