"""The admin API: what is loaded, and load / unload by hand. Loopback-only unless configured;
once API keys exist, an admin key too (gateway/auth.py).

`GET /admin/models`, `POST /admin/models/{id}/load`, `POST /admin/models/{id}/unload`,
`GET /admin/budget`, `POST /admin/route`, `GET /admin/keys` (and `GET /admin/status`, the status
page's snapshot: gateway/status.py). `konsilium ps` reads the first.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath

from gateway import auth, convert
from gateway import protocol as p
from gateway.completions import decode
from gateway.council import council_name
from gateway.models import json_response, model_status, services_of
from gateway.peer import ip_of
from gateway.routed import explain, route_request
from gateway.services import Services
from konsilium.errors import KeyStoreUnavailableError, PermissionDeniedError
from konsilium.tenancy.keys import ApiKey, KeyStoreError, Usage
from model_store.views import ModelView
from routing.router import TargetHealth

AnyRequest = Request[Any, Any, Any]


def loopback_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A Litestar guard: refuse admin calls from other hosts when `admin_loopback_only` is on.

    The client is `scope["client"]` as `gateway/peer.py` resolved it: the socket's peer (uvicorn
    rewrites nothing), or the client a trusted proxy forwarded for. Only an IP literal can be
    loopback, never a name such as `localhost` a forwarding header might carry."""
    if not connection.app.state.services.config.admin_loopback_only:
        return
    client = connection.scope.get("client")
    address = ip_of(client[0]) if client else None
    if address is None or not address.is_loopback:
        raise PermissionDeniedError("the admin API answers loopback clients only (admin_loopback_only: true)")


def admin_view(view: ModelView, learned: TargetHealth | None) -> dict[str, object]:
    return {
        **model_status(view),
        "backend": view.backend,
        "revision": view.revision,
        "role": view.tier,
        "load": view.load,
        "estimated_mb": view.estimated_mb,
        "measured_mb": view.measured_mb,
        "reserved_mb": view.reserved_mb,
        "last_used": _iso(view.last_used),
        "load_seconds": None if view.load_seconds is None else round(view.load_seconds, 3),
        "loads": view.loads,
        "ttft_ms": None if learned is None or learned.ttft_ms is None else round(learned.ttft_ms, 1),
        "breaker": learned.breaker if learned else "closed",
        "adapters": [a.name for a in view.adapters if a.resident],  # LoRA adapters resident now (vllm)
    }


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _one(services: Services, view: ModelView) -> Response[bytes]:
    return json_response(admin_view(view, services.router.view().get(view.id)))


def admin_views(services: Services) -> list[dict[str, object]]:
    """Every model as `GET /admin/models` (and the status page) shows it."""
    learned = services.router.view()
    return [admin_view(v, learned.get(v.id)) for v in services.store.view()]


@get("/admin/models", guards=[loopback_only])
async def admin_models(request: AnyRequest) -> Response[bytes]:
    return json_response({"models": admin_views(services_of(request))})


@post("/admin/models/{model_id:str}/load", guards=[loopback_only], status_code=200)
async def admin_load(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    services = services_of(request)
    return _one(services, await services.store.load(model_id))


@post("/admin/models/{model_id:str}/unload", guards=[loopback_only], status_code=200)
async def admin_unload(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    services = services_of(request)
    return _one(services, await services.store.unload(model_id))


@get("/admin/budget", guards=[loopback_only])
async def admin_budget(request: AnyRequest) -> Response[bytes]:
    return json_response(services_of(request).store.budget_view())


@post("/admin/route", guards=[loopback_only], status_code=200)
async def admin_route(request: AnyRequest) -> Response[bytes]:
    """The routing decision for a chat-completion body, without generating anything: the
    dispatcher's own `explain`, so it cannot disagree with what a request would do."""
    services = services_of(request)
    body = await decode(request, p.chat_request_decoder)
    route = route_request(request.headers, body.model, ab_fraction=0.0, access=auth.access())
    generation = convert.chat_request(body)
    addressable = services.config.addressable()
    name = council_name(services, body.model)
    council = None if name is None else services.config.council(name)
    if name is not None and council is not None:  # each seat's call and the Director's
        calls = await services.council.explain(council, generation, route)
        seats = [{"seat": seat, **explain(role, decision, addressable)} for seat, role, decision in calls]
        return json_response({"council": name, "agents": seats[:-1], "director": seats[-1]})
    role, decision = await services.dispatcher.explain(generation, route)
    return json_response(explain(role, decision, addressable))


@get("/admin/keys", guards=[loopback_only])
async def admin_keys(request: AnyRequest) -> Response[bytes]:
    """Every key (never a secret nor its digest) with its usage: stored, plus what this replica
    has counted since its last flush (at most `tenancy.refresh_s` old)."""
    tenancy = services_of(request).tenancy
    if tenancy is None:
        return json_response({"keys": []})
    store = tenancy.ring.store
    try:
        keys, stored = await asyncio.to_thread(lambda: (store.list_keys(), store.usage()))
    except KeyStoreError as exc:
        raise KeyStoreUnavailableError(f"The key store cannot be read: {exc}", retry_after=1) from exc
    usage = tenancy.usage(stored)
    return json_response({"keys": [key_view(k, usage.get(k.id, Usage())) for k in keys]})


def key_view(key: ApiKey, usage: Usage) -> dict[str, object]:
    return {
        "id": key.id, "name": key.name, "shown": key.shown + "…", "tenant": key.tenant, "models": list(key.models),
        "rpm": key.rpm, "tpm": key.tpm, "max_parallel": key.max_parallel, "admin": key.admin,
        "created": _iso(key.created), "revoked": _iso(key.revoked),
        "usage": {"requests": usage.requests, "prompt_tokens": usage.prompt_tokens,
                  "completion_tokens": usage.completion_tokens, "errors": usage.errors,
                  "last_used": _iso(usage.last_used)},
    }  # fmt: skip
