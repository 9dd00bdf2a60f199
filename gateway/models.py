"""`GET /v1/models`, `GET /v1/models/{id}`, `GET /health` and `GET /ready`."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath
from msgspec import UNSET

from gateway import protocol as p
from gateway.services import Services
from model_store.views import ModelView

AnyRequest = Request[Any, Any, Any]


def services_of(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


def json_response(obj: object, status_code: int = 200) -> Response[bytes]:
    return Response(content=p.encoder.encode(obj), media_type="application/json", status_code=status_code)


def _models(view: ModelView) -> list[p.Model]:
    """A model, then its LoRA adapters (each "ready" while resident on its base's server)."""
    model = p.Model(
        id=view.id, created=view.created, owned_by=view.owned_by, context_length=view.context_length, state=view.state
    )
    return [model] + [
        p.Model(
            id=a.name,
            created=view.created,
            owned_by=view.owned_by,
            context_length=view.context_length,
            state="ready" if a.resident else "unloaded",
            parent=view.id,
        )
        for a in view.adapters
    ]


@get("/v1/models")
async def list_models(request: AnyRequest) -> Response[bytes]:
    models = [m for v in services_of(request).store.view() for m in _models(v)]
    bases = [m for m in models if m.parent is UNSET]  # models first, then adapters (config order)
    return json_response(p.ModelList(data=bases + [m for m in models if m.parent is not UNSET]))


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    store = services_of(request).store
    name = model_id.lstrip("/")
    found = next(m for m in _models(store.view_of(store.base_of(name))) if m.id == name)
    return json_response(found)


@get("/health")
async def health() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/ready")
async def ready(request: AnyRequest) -> Response[bytes]:
    """503 while an eager model is loading or failed to load; a model whose worker exited is
    restarted by the next request, so it does not take the gateway out of rotation."""
    views = services_of(request).store.view()
    is_ready = all(v.state not in ("loading", "failed") for v in views if v.load == "eager")
    models = [model_status(v) for v in views]
    return json_response({"ready": is_ready, "models": models}, status_code=200 if is_ready else 503)


def model_status(view: ModelView) -> dict[str, object]:
    return {
        "id": view.id,
        "state": view.state,
        "ready": view.ready,
        "detail": view.detail,
        "pid": view.pid,
        "in_flight": view.in_flight,
        "queued": view.queued,
        "generating": view.generating,
    }
