"""`GET /v1/models`, `GET /v1/models/{id}`, `GET /health` and `GET /ready`."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from gateway import protocol as p
from gateway.services import Services
from konsilium.errors import ModelNotFoundError
from model_store.backend import Backend

AnyRequest = Request[Any, Any, Any]


def _services(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


def _model(backend: Backend) -> p.Model:
    info = backend.info
    return p.Model(id=info.id, created=info.created, owned_by=info.owned_by, context_length=info.context_length)


def _json(obj: object, status_code: int = 200) -> Response[bytes]:
    return Response(content=p.encoder.encode(obj), media_type="application/json", status_code=status_code)


@get("/v1/models")
async def list_models(request: AnyRequest) -> Response[bytes]:
    backends = _services(request).registry.models().values()
    return _json(p.ModelList(data=[_model(b) for b in backends]))


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: AnyRequest, model_id: str) -> Response[bytes]:
    model_id = model_id.lstrip("/")
    backends = _services(request).registry.models()
    if model_id not in backends:
        raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")
    return _json(_model(backends[model_id]))


@get("/health")
async def health() -> Response[bytes]:
    return _json({"status": "ok"})


@get("/ready")
async def ready(request: AnyRequest) -> Response[bytes]:
    """503 while an eager model is loading or failed to load; a model whose worker exited is
    restarted by the next request, so it does not take the gateway out of rotation."""
    services = _services(request)
    eager = {m.id for m in services.config.models if m.load == "eager"}
    models = [{"id": model_id, **_health(b)} for model_id, b in services.registry.models().items()]
    is_ready = all(m["state"] not in ("loading", "failed") for m in models if m["id"] in eager)
    return _json({"ready": is_ready, "models": models}, status_code=200 if is_ready else 503)


def _health(backend: Backend) -> dict[str, object]:
    health: dict[str, object] = msgspec.structs.asdict(backend.health())
    return health
