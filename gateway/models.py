"""`GET /v1/models`, `GET /v1/models/{id}`, `GET /health` and `GET /ready`."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath
from msgspec import UNSET

from gateway import auth
from gateway import protocol as p
from gateway.council import PREFIX
from gateway.services import Services
from konsilium.config import DEFAULT_COUNCIL
from konsilium.errors import ModelNotFoundError
from model_store.views import ModelView
from routing.requests import RouteRequest

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


def _councils(services: Services) -> list[p.Model]:
    """The councils, as the models an IDE's picker offers (`konsilium`, `konsilium/review`)."""
    if not services.store.view():
        return []
    names = dict.fromkeys([DEFAULT_COUNCIL, *services.config.councils])
    ids = [PREFIX if n == DEFAULT_COUNCIL else f"{PREFIX}/{n}" for n in names]
    return [p.Model(id=i, created=services.started, owned_by="konsilium") for i in ids if not services.store.knows(i)]


def _visible(services: Services) -> list[p.Model]:
    """The models and adapters the caller's key may use (every one, with keys off)."""
    route = RouteRequest(model="", access=auth.access())
    return [m for v in services.store.view() for m in _models(v) if services.router.permits(route, m.id)]


@get("/v1/models")
async def list_models(request: AnyRequest) -> Response[bytes]:
    services = services_of(request)
    models = _visible(services)
    bases = [m for m in models if m.parent is UNSET]  # models first, then adapters (config order), councils
    adapters = [m for m in models if m.parent is not UNSET]
    return json_response(p.ModelList(data=bases + adapters + _councils(services)))


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    services = services_of(request)
    name = model_id.lstrip("/")
    council = next((m for m in _councils(services) if m.id == name), None)
    if council is not None:
        return json_response(council)
    found = next((m for m in _visible(services) if m.id == name), None)
    if found is None:  # unknown, or not this key's: the same answer
        raise ModelNotFoundError(f"The model {name!r} does not exist.", param="model")
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
        "max_concurrency": view.max_concurrency,
        "in_flight": view.in_flight,
        "queued": view.queued,
        "generating": view.generating,
    }
