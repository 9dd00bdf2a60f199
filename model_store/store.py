"""The model store: every configured model, its lifecycle, and the memory budget they share.

Per request, `stream()` admits it (or refuses with 429 when the model's queue is full), waits
for one of the model's `max_concurrency` slots, makes sure the model is loaded (`loading.py`
plans what to evict with the pure `plan_load`) and relays the backend's events. A lease is held
from admission to the last event, so a model with requests in flight or queued is never evicted.

An id's entry can be replaced while it serves — a promoted revision, a config reload that
changed or removed the model: the old entry is retired, finishes the requests that hold it, and
unloads; new requests reach the new one at once. A staged candidate is an entry of its own that
no request reaches; the control prompts go to it through `stream_candidate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec
from opentelemetry import trace

from konsilium.config import Config
from konsilium.errors import ConflictError, GatewayError, ModelNotFoundError, RateLimitError, UnsupportedParameterError
from konsilium.manifest import Manifest
from konsilium.observability.events import NoObserver, Observer
from konsilium.reload_plan import ModelChanges, model_changes
from model_store.backend import Backend, wrong_kind
from model_store.budget import Budget, detect_budget
from model_store.lifecycle import Entry
from model_store.loading import Loader
from model_store.notices import Admitted, Loading, Notice, Queued, StoreEvent
from model_store.registry import build_backend
from model_store.types import EmbeddingRequest, Embeddings, GenerationRequest
from model_store.views import BudgetView, ModelView, model_view

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("konsilium.model_store")


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
        self._given = backends or {}
        self._entries = {m.id: self._entry(m) for m in config.models}
        self._adapter_bases = _adapter_bases(config)
        self._candidates: dict[str, Entry] = {}  # staged revisions, by model id: no request reaches them
        self._retired: list[Entry] = []  # replaced or removed, finishing their requests
        self._staged = 0  # numbers the keys of candidates and retired entries
        self._tasks: set[asyncio.Task[None]] = set()
        self._loader = Loader(config, self._holders, clock=clock, wall_clock=wall_clock, observer=self._observer)
        self._sweeper: asyncio.Task[None] | None = None

    def _entry(self, manifest: Manifest, key: str = "") -> Entry:
        backend = self._given.get(key or manifest.id) or build_backend(manifest)
        return Entry(manifest, backend, asyncio.Semaphore(manifest.concurrency), key=key)

    def _holders(self) -> Iterator[Entry]:
        """Every entry that may hold memory or a process."""
        yield from self._entries.values()
        yield from self._candidates.values()
        yield from self._retired

    @property
    def budget(self) -> Budget:
        return self._loader.budget

    @property
    def config(self) -> Config:
        """The running config, with promoted and rolled-back revisions in it."""
        return self._config

    # ---- what the layers above read: plain views -------------------------------------------
    def view(self) -> list[ModelView]:
        """Every model, in config order."""
        return [model_view(e) for e in self._entries.values()]

    def view_of(self, model_id: str) -> ModelView:
        return model_view(self._get(model_id))

    def candidate_view(self, model_id: str) -> ModelView | None:
        entry = self._candidates.get(model_id)
        return None if entry is None else model_view(entry)

    def manifest_of(self, model_id: str) -> Manifest:
        return self._get(model_id).manifest

    def candidate_manifest(self, model_id: str) -> Manifest:
        return self._candidate(model_id).manifest

    def _candidate(self, model_id: str) -> Entry:
        entry = self._candidates.get(model_id)
        if entry is None:  # never staged, or dropped since: a reload changed or removed the model
            raise ConflictError(f"model {model_id!r} has no staged candidate (a reload drops it)", param="model")
        return entry

    def knows(self, name: str) -> bool:
        """A model id or a LoRA adapter's name."""
        return name in self._entries or name in self._adapter_bases

    def base_of(self, name: str) -> str:
        """The model that serves `name`: itself, or the base of a LoRA adapter."""
        return self._adapter_bases.get(name) or self._get(name).id

    def budget_view(self) -> BudgetView:
        used, foreign = self._loader.used_mb(), self._loader.foreign_mb()
        return BudgetView(
            total_mb=self.budget.total_mb,
            source=self.budget.source,
            device=self.budget.device,
            used_mb=used,
            foreign_mb=foreign,
            free_mb=self.budget.total_mb - used - foreign,
            models={e.key: e.reserved_mb for e in self._holders() if e.reserved_mb},
        )

    def count_prompt_tokens(self, name: str, request: GenerationRequest) -> int | None:
        """The prompt in the tokens of the model serving `name`, where it can count them here.
        CPU work that grows with the prompt: call it in a thread."""
        return self._entries[self.base_of(name)].backend.count_prompt_tokens(request)

    def digest(self, path: Path) -> str:
        return self._loader.digest(path)

    def _get(self, model_id: str) -> Entry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")
        return entry

    # ---- start and stop ------------------------------------------------------------------
    async def start(self) -> None:
        await self._detect_budget()
        await self._load_eager(list(self._entries.values()))
        self._sweeper = asyncio.create_task(self._loader.sweep_idle(), name="idle-unload")

    async def _detect_budget(self) -> None:
        config = self._config
        budget = await asyncio.to_thread(detect_budget, config.memory_budget_mb, config.memory_reserve_mb)
        self._loader.budget = budget
        log.info("memory budget %d MB from %s %s", budget.total_mb, budget.source, budget.device)

    async def _load_eager(self, entries: list[Entry], after: Sequence[asyncio.Task[None] | None] = ()) -> None:
        """`after`: the retirements to wait for first (the memory they return may be needed)."""
        await asyncio.gather(*(t for t in after if t is not None), return_exceptions=True)
        for entry in entries:
            if entry.manifest.load == "eager":
                try:
                    await self.load(entry.id)
                except GatewayError as exc:
                    log.error("model %s failed to load: %s", entry.id, exc.message)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        holders = list(self._holders())
        await asyncio.gather(*(e.backend.unload() for e in holders), return_exceptions=True)
        for entry in holders:
            if entry.state == "ready":
                self._observer.unloaded(entry.id, "shutdown")
            entry.move("shutdown")

    # ---- replacing what serves an id ---------------------------------------------------------
    async def apply(self, config: Config) -> ModelChanges:
        """A reloaded config's models: added ones join (eager ones load), changed ones get a new
        entry (the old one retires), removed ones retire; no await before all of it is in place."""
        changes = model_changes(self._config.models, config.models)
        manifests = {m.id: m for m in config.models}
        retiring = []
        for model_id in (*changes.removed, *changes.changed):
            self.drop_candidate(model_id)
            retiring.append(self._retire(self._entries.pop(model_id)))
        for model_id in changes.updated:
            self._entries[model_id].manifest = manifests[model_id]
        fresh = [self._entry(manifests[i]) for i in (*changes.added, *changes.changed)]
        self._entries.update({e.id: e for e in fresh})
        self._entries = {i: self._entries[i] for i in manifests}  # config order
        self._adapter_bases = _adapter_bases(config)
        budget_changed = (config.memory_budget_mb, config.memory_reserve_mb) != (
            self._config.memory_budget_mb, self._config.memory_reserve_mb)  # fmt: skip
        self._config = self._loader.config = config
        if budget_changed:
            await self._detect_budget()
        self._spawn(self._load_eager(fresh, after=retiring), "load-reloaded")
        return changes

    def stage(self, manifest: Manifest) -> None:
        """A candidate revision of `manifest.id` beside the active one (a previous candidate retires)."""
        self._get(manifest.id)
        self.drop_candidate(manifest.id)
        self._staged += 1
        self._candidates[manifest.id] = self._entry(manifest, key=f"{manifest.id}@candidate-{self._staged}")

    async def load_candidate(self, model_id: str) -> ModelView:
        return await self._load(self._candidate(model_id))

    def promote(self, manifest: Manifest) -> None:
        """The candidate serves the id from the next request on (with `manifest`: the same process
        fields, the staged revisions rewritten); the active entry retires."""
        entry = self._candidate(manifest.id)
        del self._candidates[manifest.id]
        entry.manifest, entry.key = manifest, manifest.id
        self._swap(entry)
        self._spawn(self._load_eager([entry]), "load-promoted")  # evicted since it was staged

    def install(self, manifest: Manifest) -> None:
        """A new entry for the id (a rollback): it loads on its next request; the active one retires."""
        self.drop_candidate(manifest.id)
        retiring = self._swap(entry := self._entry(manifest))
        self._spawn(self._load_eager([entry], after=[retiring]), "load-installed")

    def _swap(self, entry: Entry) -> asyncio.Task[None] | None:
        retiring = self._retire(self._entries[entry.id])
        self._entries[entry.id] = entry
        models = [entry.manifest if m.id == entry.id else m for m in self._config.models]
        self._config = self._loader.config = msgspec.structs.replace(self._config, models=models)
        return retiring

    def drop_candidate(self, model_id: str, *, restore: bool = False) -> None:
        """`restore`: an eager active entry unloaded to make room for it loads again (a no-op if it
        is loaded)."""
        entry = self._candidates.pop(model_id, None)
        if entry is not None:
            retiring = self._retire(entry)
            if restore:
                self._spawn(self._load_eager([self._entries[model_id]], after=[retiring]), "load-restored")

    def _retire(self, entry: Entry) -> asyncio.Task[None] | None:
        """The entry finishes its requests, then unloads: the task doing it now, if it is idle."""
        self._staged += 1
        entry.retired, entry.key = True, f"{entry.id}@retired-{self._staged}"
        self._retired.append(entry)
        return None if entry.leases else self._spawn(self._finish_retired(entry), f"retire-{entry.key}")

    async def _finish_retired(self, entry: Entry) -> None:
        if entry.load_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(entry.load_task)
        if entry.leases or entry not in self._retired:
            return  # a request took it meanwhile (a stage's control prompt); its end retires it
        self._retired.remove(entry)
        if entry.state == "ready":
            entry.move("unload")
            log.info("unloading %s: replaced or removed", entry.key)
            await self._loader.unload(entry, "retired")
        elif entry.state != "unloading":
            await entry.backend.unload()  # a failed or never-started process: nothing booked

    def _spawn(self, work: Coroutine[None, None, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- serving ----------------------------------------------------------------------------
    def stream(self, model_id: str, request: GenerationRequest) -> AsyncGenerator[StoreEvent, None]:
        return self._generate(model_id, request, candidate=False)

    def stream_candidate(self, model_id: str, request: GenerationRequest) -> AsyncGenerator[StoreEvent, None]:
        """A control prompt to the staged revision (through its own slots, as a request would)."""
        return self._generate(model_id, request, candidate=True)

    async def _generate(
        self, model_id: str, request: GenerationRequest, *, candidate: bool
    ) -> AsyncGenerator[StoreEvent, None]:
        """Errors (an unknown or wrong kind of model) are raised from the first `anext()`."""
        entry = self._candidate(model_id) if candidate else self._entries[self.base_of(model_id)]
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
                task = await self._loader.start(entry)
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
            if entry.retired and not entry.leases:
                self._spawn(self._finish_retired(entry), f"retire-{entry.key}")

    async def load(self, model_id: str) -> ModelView:
        return await self._load(self._get(model_id))

    async def _load(self, entry: Entry) -> ModelView:
        task = await self._loader.start(entry)
        if task is not None:
            await asyncio.shield(task)
        return model_view(entry)

    async def unload(self, model_id: str) -> ModelView:
        entry = self._get(model_id)
        if entry.leases:
            raise ConflictError(f"model {model_id!r} has {entry.leases} requests in flight or queued", param="model")
        if entry.state == "ready":
            entry.move("unload")
            await self._loader.unload(entry, "admin")
        return model_view(entry)

    def _admit(self, entry: Entry) -> None:
        m = entry.manifest
        if entry.in_flight >= m.concurrency and entry.queued >= m.max_queue:
            raise RateLimitError(
                f"model {entry.id!r} is busy: {entry.in_flight} requests in flight and {entry.queued} queued "
                f"(max_queue {m.max_queue})",
                retry_after=1,
            )


def _queue_attributes(model_id: str, entry: Entry) -> dict[str, str | int]:
    return {"gen_ai.request.model": model_id, "konsilium.queue.ahead": entry.queued - 1 + entry.in_flight}


def _adapter_bases(config: Config) -> dict[str, str]:
    return {a.name: m.id for m in config.models for a in m.adapters}
