"""Operating the models without a restart (admin API, loopback and admin keys as the rest):

- `POST /admin/reload`: read the config and manifests again (gateway/reload.py); 400
  `invalid_config` with every problem when it is refused, the running config kept;
- `POST /admin/models/{id}/stage` (`{"path": ..., "revision": ..., "checksum_sha256": ...}`, or
  nothing: the manifest's `candidate:`), `/promote`, `/rollback`: staged updates
  (model_store/staging.py), each answered with its report;
- `GET /admin/models/{id}/update`: the revision serving, the staged candidate, the last report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.admin import admin_view, loopback_only
from gateway.models import json_response, services_of
from konsilium.errors import ConflictError, InternalError, InvalidRequestError
from konsilium.manifest import Revision
from model_store.staging import Stager

AnyRequest = Request[Any, Any, Any]


@post("/admin/reload", guards=[loopback_only], status_code=200)
async def admin_reload(request: AnyRequest) -> Response[bytes]:
    reloader = services_of(request).reloader
    if reloader is None:
        raise ConflictError("this server was not started from a config source: there is nothing to read again")
    return json_response(await reloader.reload())


@post("/admin/models/{model_id:str}/stage", guards=[loopback_only], status_code=200)
async def admin_stage(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    raw = await request.body()
    try:
        revision = msgspec.json.decode(raw, type=Revision) if raw.strip() else None
    except msgspec.ValidationError as exc:
        field = str(exc).rpartition("$.")[2].rstrip("`") or None
        raise InvalidRequestError(f"the stage request: {exc}", param=field) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"the stage request is not valid JSON: {exc}") from exc
    return json_response(await _stager(request).stage(model_id, revision))


@post("/admin/models/{model_id:str}/promote", guards=[loopback_only], status_code=200)
async def admin_promote(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    report = await _stager(request).promote(model_id)
    _adopt(request, model_id)
    return json_response(report)


@post("/admin/models/{model_id:str}/rollback", guards=[loopback_only], status_code=200)
async def admin_rollback(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    report = await _stager(request).rollback(model_id)
    _adopt(request, model_id)
    return json_response(report)


@get("/admin/models/{model_id:str}/update", guards=[loopback_only])
async def admin_update(request: AnyRequest, model_id: FromPath[str]) -> Response[bytes]:
    services = services_of(request)
    stager = _stager(request)
    last = stager.report(model_id)
    candidate = services.store.candidate_view(model_id)
    manifest = services.store.manifest_of(model_id)
    return json_response({
        "model": model_id,
        "revision": manifest.revision,
        "path": manifest.path,
        "previous": manifest.previous,
        "candidate": None if candidate is None else admin_view(candidate, None),
        "last": last,
    })  # fmt: skip


def _stager(request: AnyRequest) -> Stager:
    stager = services_of(request).stager
    if stager is None:
        raise InternalError("staged updates are not wired into this application")
    return stager


def _adopt(request: AnyRequest, model_id: str) -> None:
    """The store's config, with the new revision in it, is the running one from here on; what the
    router learned of the old revision (its latency, its breaker) is forgotten."""
    services = services_of(request)
    services.router.forget(model_id)
    request.app.state.services = dataclasses.replace(services, config=services.store.config)
