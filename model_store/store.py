"""The model store: every configured model, its lifecycle, and the memory budget they share.

Per request, `stream()` admits it (or refuses with 429 when the model's queue is full), waits
for one of the model's `max_concurrency` slots, makes sure the model is loaded — planning what
to evict with the pure `plan_load` — and relays the backend's events. A lease is held from
admission to the last event, so a model with requests in flight or queued is never evicted.

Decisions that read shared state and then change it (`_reserve`, the idle sweep) never await in
between: in one event loop that makes each of them atomic without a lock. Loads run as tasks
that a leaving client cannot cancel halfway, so the ledger always matches what is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path

import msgspec
from opentelemetry import trace

from konsilium.config import Config
from konsilium.errors import (
    BackendUnavailableError,
    ConflictError,
    GatewayError,
    ModelLoadError,
    ModelNotFoundError,
    RateLimitError,
    UnsupportedParameterError,
)
from konsilium.observability.events import NoObserver, Observer, UnloadReason
from model_store.backend import Backend, wrong_kind
from model_store.budget import Budget, detect_budget, foreign_gpu_mb, measured_mb, process_tree
from model_store.checksum import ChecksumCache, default_cache_dir
from model_store.estimate import GGUFError
from model_store.lifecycle import Entry
from model_store.planner import Resident, plan_load
from model_store.registry import build_backend
from model_store.types import EmbeddingRequest, Embeddings, Event, GenerationRequest
from model_store.views import BudgetView, ModelView, model_view

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("konsilium.model_store")

RETRY_AFTER_FULL_S = 5


class Notice(msgspec.Struct, frozen=True):
    """Not a backend event: what the store tells its caller while the request waits."""

    model: str


class Queued(Notice, frozen=True):
    """Every slot of the model is taken: the request waits its turn (bounded by `max_queue`)."""


class Admitted(Notice, frozen=True):
    """After `Queued`: the request holds a slot now; the model starts on it from here."""


class Loading(Notice, frozen=True):
    """The model is being loaded for this request (SSE heartbeat time)."""


StoreEvent = Event | Notice


class ModelStore:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._observer = observer or NoObserver()
        self._wall = wall_clock
        given = backends or {}
        self._entries = {
            m.id: Entry(m, given.get(m.id) or build_backend(m), asyncio.Semaphore(m.concurrency)) for m in config.models
        }
        self._adapter_bases = {a.name: m.id for m in config.models for a in m.adapters}
        self._checksums = ChecksumCache(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
        self.budget = Budget(total_mb=0, source="config")
        self._sweeper: asyncio.Task[None] | None = None

    # ---- what the layers above read: plain views -------------------------------------------
    def view(self) -> list[ModelView]:
        """Every model, in config order."""
        return [model_view(e) for e in self._entries.values()]

    def view_of(self, model_id: str) -> ModelView:
        return model_view(self._get(model_id))

    def knows(self, name: str) -> bool:
        """A model id or a LoRA adapter's name."""
        return name in self._entries or name in self._adapter_bases

    def base_of(self, name: str) -> str:
        """The model that serves `name`: itself, or the base of a LoRA adapter."""
        return self._adapter_bases.get(name) or self._get(name).id

    def budget_view(self) -> BudgetView:
        used, foreign = self._used_mb(), self._foreign_mb()
        return BudgetView(
            total_mb=self.budget.total_mb,
            source=self.budget.source,
            device=self.budget.device,
            used_mb=used,
            foreign_mb=foreign,
            free_mb=self.budget.total_mb - used - foreign,
            models={e.id: e.reserved_mb for e in self._entries.values() if e.reserved_mb},
        )

    def count_prompt_tokens(self, name: str, request: GenerationRequest) -> int | None:
        """The prompt in the tokens of the model serving `name`, where it can count them here.
        CPU work that grows with the prompt: call it in a thread."""
        return self._entries[self.base_of(name)].backend.count_prompt_tokens(request)

    def _get(self, model_id: str) -> Entry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")
        return entry

    def _used_mb(self) -> int:
        return sum(e.reserved_mb for e in self._entries.values())

    def _foreign_mb(self) -> int:
        pids = {p for e in self._entries.values() if (pid := e.backend.health().pid) for p in process_tree(pid)}
        return foreign_gpu_mb(pids)

    # ---- start and stop ------------------------------------------------------------------
    async def start(self) -> None:
        self.budget = await asyncio.to_thread(
            detect_budget, self._config.memory_budget_mb, self._config.memory_reserve_mb
        )
        log.info("memory budget %d MB from %s %s", self.budget.total_mb, self.budget.source, self.budget.device)
        for entry in self._entries.values():
            if entry.manifest.load == "eager":
                try:
                    await self.load(entry.id)
                except GatewayError as exc:
                    log.error("model %s failed to load at start-up: %s", entry.id, exc.message)
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="idle-unload")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await asyncio.gather(*(e.backend.unload() for e in self._entries.values()), return_exceptions=True)
        for entry in self._entries.values():
            if entry.state == "ready":
                self._observer.unloaded(entry.id, "shutdown")
            entry.move("shutdown")

    # ---- serving ----------------------------------------------------------------------------
    async def stream(self, model_id: str, request: GenerationRequest) -> AsyncGenerator[StoreEvent, None]:
        entry = self._entries[self.base_of(model_id)]
        if entry.manifest.embedding:
            raise wrong_kind(model_id, embedding=True)
        adapter = model_id if model_id != entry.id else None
        async with contextlib.aclosing(self._turn(entry, model_id)) as turn:
            async for notice in turn:
                if notice is None:
                    break
                yield notice
            async for event in entry.backend.stream(request, adapter):
                yield event

    async def embed(self, model_id: str, request: EmbeddingRequest) -> Embeddings:
        """Vectors from an embedding model, through the same queue, slots, leases and loading as
        a generation (without its notices: nothing streams while it waits)."""
        entry = self._get(model_id)
        if not entry.manifest.embedding:
            raise wrong_kind(model_id, embedding=False)
        if request.dimensions is not None and not entry.manifest.matryoshka:
            raise UnsupportedParameterError(
                f"The model {model_id!r} does not take `dimensions`: its vectors are not trained to be "
                "cut shorter (a Matryoshka model's manifest says `matryoshka: true`).",
                param="dimensions",
            )
        async with contextlib.aclosing(self._turn(entry, model_id)) as turn:
            async for notice in turn:
                if notice is None:
                    break
            return await entry.backend.embed(request)

    async def _turn(self, entry: Entry, model_id: str) -> AsyncGenerator[Notice | None, None]:
        """Admit, lease, wait for a slot, make the model ready — yielding the notices on the way —
        then `None`: the caller's turn, held until it closes this generator (no await in between
        that and the slot's release, so a leaving client frees it at once)."""
        self._admit(entry)
        entry.leases += 1
        try:
            entry.queued += 1
            waited = self._clock()
            queued = entry.slots.locked()
            try:
                if queued:  # a span only for a real wait: spans cost ~15 us each
                    yield Queued(model=model_id)
                    with _tracer.start_as_current_span("queue wait", attributes=_queue_attributes(model_id, entry)):
                        await entry.slots.acquire()
                else:
                    await entry.slots.acquire()
            finally:
                entry.queued -= 1
            self._observer.queue_waited(model_id, self._clock() - waited)
            entry.in_flight += 1
            try:
                if queued:
                    yield Admitted(model=model_id)
                task = await self._start_load(entry)
                if task is not None:
                    if entry.manifest.path is not None:  # a remote model has nothing to wait for
                        yield Loading(model=model_id)
                    await asyncio.shield(task)
                yield None
            finally:
                entry.in_flight -= 1
                entry.slots.release()
        finally:
            entry.leases -= 1
            entry.last_used, entry.last_used_wall = self._clock(), self._wall()

    async def load(self, model_id: str) -> ModelView:
        entry = self._get(model_id)
        task = await self._start_load(entry)
        if task is not None:
            await asyncio.shield(task)
        return model_view(entry)

    async def unload(self, model_id: str) -> ModelView:
        entry = self._get(model_id)
        if entry.leases:
            raise ConflictError(f"model {model_id!r} has {entry.leases} requests in flight or queued", param="model")
        if entry.state == "ready":
            entry.move("unload")
            await self._unload(entry, "admin")
        return model_view(entry)

    def _admit(self, entry: Entry) -> None:
        m = entry.manifest
        if entry.in_flight >= m.concurrency and entry.queued >= m.max_queue:
            raise RateLimitError(
                f"model {entry.id!r} is busy: {entry.in_flight} requests in flight and {entry.queued} queued "
                f"(max_queue {m.max_queue})",
                retry_after=1,
            )

    # ---- loading -------------------------------------------------------------------------
    async def _start_load(self, entry: Entry) -> asyncio.Task[None] | None:
        """None if ready; else join the load in progress, or plan one and start it.

        Every refusal (cooldown, bad file, does not fit) is raised before anything changes.
        """
        if _ready(entry):
            return None
        if entry.load_task is not None and not entry.load_task.done():
            return entry.load_task
        if entry.state == "failed" and self._clock() < entry.failed_until:
            retry = max(1, round(entry.failed_until - self._clock()))
            raise ModelLoadError(f"model {entry.id!r} failed to load: {entry.last_error}", retry_after=retry)
        need = await self._need_mb(entry)
        if _ready(entry):  # another request loaded it while we read the file
            return None
        if entry.load_task is not None and not entry.load_task.done():
            return entry.load_task
        victims = self._reserve(entry, need)
        entry.load_task = asyncio.create_task(self._load(entry, victims), name=f"load-{entry.id}")
        entry.load_task.add_done_callback(_retrieve)  # every waiter may have left; the error is in the entry
        return entry.load_task

    async def _need_mb(self, entry: Entry) -> int:
        """Measured use if we have it, else the manifest's override, else the backend's estimate."""
        if entry.measured_mb is not None:
            return entry.measured_mb
        if entry.need_mb is None:
            try:
                entry.need_mb = await asyncio.to_thread(self._estimate, entry)
            except (GGUFError, OSError) as exc:
                self._fail(entry, str(exc))
                raise ModelLoadError(f"model {entry.id!r} failed to load: {exc}", retry_after=self._retry()) from exc
        return entry.need_mb

    def _estimate(self, entry: Entry) -> int:
        """Pinned files are verified, then the backend estimates (reading the file: a bad one fails here)."""
        m = entry.manifest
        if m.path is not None and m.checksum_sha256 and not m.skip_checksum:
            path = Path(m.path)
            actual = self._checksums.digest(path)
            if actual != m.checksum_sha256:
                raise GGUFError(f"checksum mismatch for {path.name}: expected {m.checksum_sha256}, got {actual}")
        estimate = entry.backend.memory_need_mb()
        return m.memory_mb if m.memory_mb is not None else estimate

    def _reserve(self, entry: Entry, need: int) -> list[Entry]:
        """Plan and book in one step (no await): mark the victims and the target's memory."""
        budget = self.budget.total_mb - self._foreign_mb()
        plan = plan_load(entry.id, need, self._residents(), budget)
        if not plan.fits:
            raise BackendUnavailableError(
                f"model {entry.id!r} does not fit: {plan.reason}", retry_after=RETRY_AFTER_FULL_S
            )
        victims = [self._entries[v] for v in plan.evict]
        for victim in victims:
            victim.move("unload")
        entry.move("load", reserve_mb=need)
        return victims

    def _residents(self) -> list[Resident]:
        return [
            Resident(
                id=e.id,
                memory_mb=e.reserved_mb,
                last_used=e.last_used,
                pinned=e.manifest.load == "eager" or e.state != "ready",
                leases=e.leases,
            )
            for e in self._entries.values()
            if e.reserved_mb > 0
        ]

    async def _load(self, entry: Entry, victims: list[Entry]) -> None:
        attributes = {"gen_ai.request.model": entry.id, "konsilium.model.backend": entry.manifest.backend_name,
                      "konsilium.load.evicted": [v.id for v in victims]}  # fmt: skip
        with _tracer.start_as_current_span("model load", attributes=attributes):
            await self._evict_and_load(entry, victims)

    async def _evict_and_load(self, entry: Entry, victims: list[Entry]) -> None:
        for victim in victims:
            log.info("evicting %s (%d MB) for %s", victim.id, victim.reserved_mb, entry.id)
            await self._unload(victim, "evicted")
        started = self._clock()
        try:
            await entry.backend.load()
        except GatewayError as exc:
            self._fail(entry, exc.message)
            raise ModelLoadError(
                f"model {entry.id!r} failed to load: {exc.message}", retry_after=self._retry()
            ) from exc
        entry.load_seconds = self._clock() - started
        entry.loads += 1
        self._observer.loaded(entry.id, entry.load_seconds)
        entry.move("loaded")
        entry.last_used, entry.last_used_wall = self._clock(), self._wall()
        pid = entry.backend.health().pid
        measured = await asyncio.to_thread(measured_mb, pid) if pid else None
        if measured is not None:
            entry.measured_mb = entry.reserved_mb = measured
        log.info("loaded %s in %.2f s (%d MB)", entry.id, entry.load_seconds, entry.reserved_mb)

    async def _unload(self, entry: Entry, reason: UnloadReason) -> None:
        """Callers mark the entry `unloading` first; a load booked meanwhile keeps its state."""
        await entry.backend.unload()
        self._observer.unloaded(entry.id, reason)
        entry.move("unloaded")

    def _fail(self, entry: Entry, message: str) -> None:
        self._observer.load_failed(entry.id)
        entry.move("load_failed")
        entry.last_error = message
        entry.failed_until = self._clock() + self._config.load_failure_cooldown_s

    def _retry(self) -> int:
        return max(1, round(self._config.load_failure_cooldown_s))

    # ---- idle unload ---------------------------------------------------------------------
    async def _sweep_idle(self) -> None:
        idle_limits = [m.idle_unload_seconds for m in self._config.models if m.idle_unload_seconds]
        period = min(5.0, max(0.1, min(idle_limits, default=20.0) / 4))
        while True:
            await asyncio.sleep(period)
            for entry in self.idle_expired():
                log.info("unloading %s after %.0f s idle", entry.id, entry.manifest.idle_unload_seconds or 0)
                try:
                    await self._unload(entry, "idle")
                except Exception:  # the sweeper outlives any one model's failure
                    log.exception("idle unload of %s failed", entry.id)

    def idle_expired(self) -> list[Entry]:
        """Marks (no await between the check and the mark) and returns the models to unload now."""
        now = self._clock()
        expired = [
            e
            for e in self._entries.values()
            if e.state == "ready"
            and e.leases == 0
            and e.manifest.idle_unload_seconds is not None
            and now - e.last_used >= e.manifest.idle_unload_seconds
        ]
        for entry in expired:
            entry.move("unload")
        return expired


def _queue_attributes(model_id: str, entry: Entry) -> dict[str, str | int]:
    return {"gen_ai.request.model": model_id, "konsilium.queue.ahead": entry.queued - 1 + entry.in_flight}


def _ready(entry: Entry) -> bool:
    """Loaded, and its process still alive: one that died since is loaded again (a new load)."""
    return entry.state == "ready" and entry.backend.health().ready


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
