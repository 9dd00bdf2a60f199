"""`POST /v1/messages` and `POST /v1/messages/count_tokens` (Anthropic's Messages API).

The request becomes a `GenerationRequest` (convert.py) and takes the one inference path
(`completions.answer`); `MessagesWire` frames the answer. Errors on these paths are rendered in
Anthropic's shape (gateway/errors.py `error_body`). `x-api-key` is read by the key check as
`Authorization` is; `anthropic-version` and `anthropic-beta` are accepted and not needed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, post

from gateway import auth, observe
from gateway import protocol as p
from gateway.completions import answer, decode
from gateway.messages import convert
from gateway.messages import protocol as a
from gateway.messages.wire import MessagesWire
from gateway.services import Services
from model_store.types import GenerationRequest
from routing.policy import estimate_tokens
from routing.requests import RouteRequest, estimated_tokens

AnyRequest = Request[Any, Any, Any]


@post("/v1/messages", status_code=200)
async def create_message(request: AnyRequest) -> Response[bytes]:
    observe.current().inference = True
    body = await decode(request, a.create_message_decoder)
    generation = convert.generation(body)
    prompt_tokens = estimated_tokens(generation)
    return await answer(request, body.model, generation, lambda model: MessagesWire(model, prompt_tokens))


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: AnyRequest) -> Response[bytes]:
    """The prompt in the model's own tokens where this process has its tokenizer (a llama.cpp
    model: its chat template, tools included); otherwise (a remote model, `auto`, a role) the
    estimate routing and limits use. Nothing is generated and no limit is charged."""
    body = await decode(request, a.count_tokens_decoder)
    tools = convert.tool_specs(body.tools or [])
    choice = convert.tool_choice(body.tool_choice, tools)
    counted = GenerationRequest(kind="chat", messages=convert.messages(body), tools=tools, tool_choice=choice)
    services: Services = request.app.state.services
    exact = None
    if services.router.permits(RouteRequest(model=body.model, access=auth.access()), body.model):
        exact = await asyncio.to_thread(services.store.count_prompt_tokens, body.model, counted)
    tokens = exact if exact is not None else estimated_tokens(counted) + _tool_tokens(body.tools or [])
    return Response(content=p.encoder.encode({"input_tokens": tokens}), media_type="application/json")


def _tool_tokens(tools: list[dict[str, Any]]) -> int:
    chars = sum(len(p.encoder.encode(t)) for t in tools)
    return estimate_tokens(chars) if chars else 0
