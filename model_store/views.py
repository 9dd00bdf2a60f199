"""What the store shows the layers above: plain, frozen snapshots, never its entries or backends.

The gateway's `/v1/models`, `/ready`, admin API and `/metrics`, and the dispatcher's routing
facts, all read these: the store's internals can change without any of them noticing.
"""

from __future__ import annotations

import msgspec

from konsilium.manifest import Manifest
from model_store.backend import State
from model_store.lifecycle import Entry


class AdapterView(msgspec.Struct, frozen=True):
    """A LoRA adapter declared on a base model, addressed as a model of its own."""

    name: str
    resident: bool  # loaded on its base's server right now


class ModelView(msgspec.Struct, frozen=True):
    id: str
    backend: str
    tier: str  # the manifest's role: primary, secondary, lightweight, micro, optional_moe
    load: str  # eager | on_demand
    state: State  # the store's state, corrected by the backend's (a process that died: unloaded)
    ready: bool  # the backend can take a request now
    detail: str
    pid: int | None
    in_flight: int
    queued: int
    max_concurrency: int
    generating: bool  # the backend itself is busy (a cancel lands within a token)
    cloud: bool  # outside this machine (counts against `allow_external_api`)
    context_length: int | None
    created: int
    owned_by: str
    estimated_mb: int | None
    measured_mb: int | None
    reserved_mb: int
    last_used: float | None  # wall clock, seconds since the epoch
    load_seconds: float | None
    loads: int
    adapters: tuple[AdapterView, ...] = ()
    embedding: bool = False  # an embedding model (POST /v1/embeddings only)
    # fill-in-the-middle: "native" (FIM tokens: the loaded vocabulary's, or the manifest's
    # `capabilities`), "emulated" (a llama.cpp model without them, `fim: emulate`), or "" (passed on)
    fim: str = ""
    revision: str = ""  # the manifest's: what `konsilium models promote` and `rollback` change


class BudgetView(msgspec.Struct, frozen=True):
    total_mb: int
    source: str
    device: str
    used_mb: int
    foreign_mb: int
    free_mb: int
    models: dict[str, int]  # reserved memory per model that holds any


def model_view(entry: Entry) -> ModelView:
    m, health, info = entry.manifest, entry.backend.health(), entry.backend.info
    state = health.state if entry.state == "ready" else entry.state  # a process that died: unloaded
    return ModelView(
        id=m.id,
        backend=m.backend_name,
        tier=m.role,
        load=m.load,
        state=state,
        ready=health.ready,
        detail=entry.last_error if entry.state == "failed" else health.detail,
        pid=health.pid,
        in_flight=entry.in_flight,
        queued=entry.queued,
        max_concurrency=m.concurrency,
        generating=health.in_flight > 0,
        cloud=m.is_cloud,
        context_length=info.context_length,
        created=info.created,
        owned_by=info.owned_by,
        estimated_mb=entry.need_mb,
        measured_mb=entry.measured_mb,
        reserved_mb=entry.reserved_mb,
        last_used=entry.last_used_wall,
        load_seconds=entry.load_seconds,
        loads=entry.loads,
        adapters=tuple(
            AdapterView(name=a.name, resident=state == "ready" and a.name in health.adapters) for a in m.adapters
        ),
        embedding=m.embedding,
        fim=fim_mode(m, info.supports_fim),
        revision=m.revision,
    )


def fim_mode(manifest: Manifest, supports_fim: bool) -> str:
    if supports_fim or "fim" in manifest.capabilities:
        return "native"
    return "emulated" if manifest.backend_name == "llama_cpp" and manifest.fim == "emulate" else ""
