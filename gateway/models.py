"""`GET /v1/models`, `GET /v1/models/{id}`, `GET /health` and `GET /ready`."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath
from msgspec import UNSET, UnsetType

from gateway import protocol as p
from gateway.services import Services
from model_store.store import Entry, ModelStore

AnyRequest = Request[Any, Any, Any]


def services_of(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


def json_response(obj: object, status_code: int = 200) -> Response[bytes]:
    return Response(content=p.encoder.encode(obj), media_type="application/json", status_code=status_code)


def _model(store: ModelStore, name: str, entry: Entry, adapter: str | None) -> p.Model:
    info = entry.backend.info
    parent: str | UnsetType = UNSET
    if adapter is None:
        state = store.state_of(entry)
    else:  # an adapter: "ready" while resident on its base's server
        state, parent = ("ready" if store.adapter_resident(entry, adapter) else "unloaded"), entry.id
    return p.Model(
        id=name,
        created=info.created,
        owned_by=info.owned_by,
        context_length=info.context_length,
        state=state,
        parent=parent,
    )


@get("/v1/models")
async def list_models(request: AnyRequest) -> Response[bytes]:
    store = services_of(request).store
    return json_response(p.ModelList(data=[_model(store, *target) for target in store.addressable()]))


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    store = services_of(request).store
    name = model_id.lstrip("/")
    entry, adapter = store.resolve(name)
    return json_response(_model(store, name, entry, adapter))


@get("/health")
async def health() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/ready")
async def ready(request: AnyRequest) -> Response[bytes]:
    """503 while an eager model is loading or failed to load; a model whose worker exited is
    restarted by the next request, so it does not take the gateway out of rotation."""
    store = services_of(request).store
    models = [model_status(store, e) for e in store.entries()]
    eager = {e.id for e in store.entries() if e.manifest.load == "eager"}
    is_ready = all(m["state"] not in ("loading", "failed") for m in models if m["id"] in eager)
    return json_response({"ready": is_ready, "models": models}, status_code=200 if is_ready else 503)


def model_status(store: ModelStore, entry: Entry) -> dict[str, object]:
    health = entry.backend.health()
    return {
        "id": entry.id,
        "state": store.state_of(entry),
        "ready": health.ready,
        "detail": entry.last_error if entry.state == "failed" else health.detail,
        "pid": health.pid,
        "in_flight": entry.in_flight,
        "queued": entry.queued,
        "generating": health.in_flight > 0,  # the worker itself is busy (a cancel lands within a token)
    }
