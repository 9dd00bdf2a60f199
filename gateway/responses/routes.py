"""`POST /v1/responses`, and `GET`/`DELETE /v1/responses/{id}` for stored ones.

The request becomes a `GenerationRequest` (convert.py) and takes the one inference path
(`completions.answer`: keys and limits, the council, routing, fallbacks); `ResponsesWire` frames
the answer. With `store` (OpenAI's default: true) the finished response and its conversation are
kept (store.py) for a follow-up's `previous_response_id` and for `GET`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.params import FromPath

from gateway import auth, observe
from gateway import protocol as p
from gateway.completions import answer, decode
from gateway.framing import Answer
from gateway.responses import convert
from gateway.responses import protocol as r
from gateway.responses.store import Owner, ResponseStore
from gateway.responses.wire import ResponsesWire
from gateway.services import Services
from konsilium.errors import InvalidRequestError, NotFoundError
from model_store.types import Message

AnyRequest = Request[Any, Any, Any]


@post("/v1/responses", status_code=200)
async def create_response(request: AnyRequest) -> Response[bytes]:
    observe.current().inference = True
    body = await decode(request, r.create_response_decoder)
    store, owner = _store(request), _owner()
    history: tuple[Message, ...] = ()
    if body.previous_response_id is not None:
        stored = store.get(owner, body.previous_response_id) if store is not None else None
        if stored is None:
            raise InvalidRequestError(
                f"Previous response with id '{body.previous_response_id}' not found "
                "(never stored, expired or evicted).",
                param="previous_response_id",
            )
        history = stored.conversation
    generation = convert.generation(body, history)
    conversation = generation.messages[1:] if body.instructions else generation.messages

    def keep(response: r.Response, said: Answer) -> None:
        if store is not None and body.store:
            reply = Message(role="assistant", content=said.text, tool_calls=tuple(said.tool_calls))
            store.put(owner, response, (*conversation, reply))

    return await answer(request, body.model, generation, lambda model: ResponsesWire(model, body, keep))


@get("/v1/responses/{response_id:str}")
async def retrieve_response(request: AnyRequest, response_id: FromPath[str]) -> Response[bytes]:
    stored = _store(request)
    found = stored.get(_owner(), response_id) if stored is not None else None
    if found is None:
        raise _not_found(response_id)
    return Response(content=found.response, media_type="application/json")


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: AnyRequest, response_id: FromPath[str]) -> Response[bytes]:
    stored = _store(request)
    if stored is None or not stored.delete(_owner(), response_id):
        raise _not_found(response_id)
    return Response(content=p.encoder.encode(r.DeletedResponse(id=response_id)), media_type="application/json")


def _store(request: AnyRequest) -> ResponseStore | None:
    services: Services = request.app.state.services
    return services.responses


def _owner() -> Owner:
    access = auth.access()
    return access.key if access is not None else ""


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"No response with id '{response_id}' found.", param="response_id")
