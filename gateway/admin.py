"""The admin API: what is loaded, and load / unload by hand. Loopback-only unless configured.

`GET /admin/models`, `POST /admin/models/{id}/load`, `POST /admin/models/{id}/unload`,
`GET /admin/budget`. `konsilium ps` reads the first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath

from gateway.models import json_response, model_status, services_of
from gateway.peer import ip_of
from gateway.services import Services
from konsilium.errors import PermissionDeniedError
from model_store.store import Entry

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


def admin_view(services: Services, entry: Entry) -> dict[str, object]:
    m, store, router = entry.manifest, services.store, services.router
    latency = router.latency.get(entry.id)
    return {
        **model_status(store, entry),
        "backend": m.backend_name,
        "role": m.role,
        "load": m.load,
        "estimated_mb": entry.need_mb,
        "measured_mb": entry.measured_mb,
        "reserved_mb": entry.reserved_mb,
        "last_used": _iso(entry.last_used_wall),
        "load_seconds": None if entry.load_seconds is None else round(entry.load_seconds, 3),
        "loads": entry.loads,
        "ttft_ms": None if latency is None or latency.ttft_ms is None else round(latency.ttft_ms, 1),
        "breaker": router.breakers[entry.id].state(),
        "adapters": list(entry.backend.health().adapters),  # LoRA adapters resident now (vllm)
    }


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@get("/admin/models", guards=[loopback_only])
async def admin_models(request: AnyRequest) -> Response[bytes]:
    services = services_of(request)
    return json_response({"models": [admin_view(services, e) for e in services.store.entries()]})


@post("/admin/models/{model_id:str}/load", guards=[loopback_only], status_code=200)
async def admin_load(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    services = services_of(request)
    return json_response(admin_view(services, await services.store.load(model_id)))


@post("/admin/models/{model_id:str}/unload", guards=[loopback_only], status_code=200)
async def admin_unload(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    services = services_of(request)
    return json_response(admin_view(services, await services.store.unload(model_id)))


@get("/admin/budget", guards=[loopback_only])
async def admin_budget(request: AnyRequest) -> Response[bytes]:
    store = services_of(request).store
    used, foreign = store.used_mb(), store.foreign_mb()
    return json_response(
        {
            "total_mb": store.budget.total_mb,
            "source": store.budget.source,
            "device": store.budget.device,
            "used_mb": used,
            "foreign_mb": foreign,
            "free_mb": store.budget.total_mb - used - foreign,
            "models": {e.id: e.reserved_mb for e in store.entries() if e.reserved_mb},
        }
    )


@post("/admin/route", guards=[loopback_only], status_code=200)
async def admin_route(request: AnyRequest) -> Response[bytes]:
    """The routing decision for a chat-completion body, without generating anything."""
    from gateway import convert
    from gateway import protocol as p
    from gateway.completions import decode, route
    from gateway.routed import explain

    body = await decode(request, p.chat_request_decoder)
    role, decision = await route(services_of(request), request, body.model, convert.chat_request(body))
    return json_response(explain(role, decision, services_of(request).config.addressable()))
