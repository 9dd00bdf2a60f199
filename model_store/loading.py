"""Loading and unloading: what a model needs, the plan that makes room for it, the booking, the
load task, and the idle sweep — for every entry the store holds (the active models, staged candidates, and
retired revisions still finishing their requests), which share one memory budget.

Every refusal (cooldown, bad file, wrong checksum, does not fit) is raised before anything
changes. `_reserve` plans and books with no await in between, so in one event loop it is atomic
without a lock; loads run as tasks a leaving client cannot cancel halfway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from opentelemetry import trace

from konsilium.config import Config
from konsilium.errors import BackendUnavailableError, GatewayError, ModelLoadError
from konsilium.observability.events import Observer, UnloadReason
from model_store.budget import Budget, foreign_gpu_mb, measured_mb, process_tree
from model_store.checksum import ChecksumCache, default_cache_dir
from model_store.estimate import GGUFError
from model_store.lifecycle import Entry
from model_store.planner import Resident, plan_load

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("konsilium.model_store")

RETRY_AFTER_FULL_S = 5


class Loader:
    def __init__(
        self,
        config: Config,
        entries: Callable[[], Iterable[Entry]],
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        observer: Observer,
    ) -> None:
        self.config = config
        self._entries = entries  # every entry that may hold memory
        self._clock, self._wall, self._observer = clock, wall_clock, observer
        self._checksums = ChecksumCache(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
        self.budget = Budget(total_mb=0, source="config")

    def used_mb(self) -> int:
        return sum(e.reserved_mb for e in self._entries())

    def foreign_mb(self) -> int:
        pids = {p for e in self._entries() if (pid := e.backend.health().pid) for p in process_tree(pid)}
        return foreign_gpu_mb(pids)

    async def start(self, entry: Entry) -> asyncio.Task[None] | None:
        """None if ready; else join the load in progress, or plan one and start it."""
        if ready(entry):
            return None
        if entry.load_task is not None and not entry.load_task.done():
            return entry.load_task
        if entry.state == "failed" and self._clock() < entry.failed_until:
            retry = max(1, round(entry.failed_until - self._clock()))
            raise ModelLoadError(f"model {entry.id!r} failed to load: {entry.last_error}", retry_after=retry)
        need = await self._need_mb(entry)
        if ready(entry):  # another request loaded it while we read the file
            return None
        if entry.load_task is not None and not entry.load_task.done():
            return entry.load_task
        victims = self._reserve(entry, need)
        entry.load_task = asyncio.create_task(self._load(entry, victims), name=f"load-{entry.key}")
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

    def digest(self, path: Path) -> str:
        """The file's sha256 (cached by size and mtime)."""
        return self._checksums.digest(path)

    def _reserve(self, entry: Entry, need: int) -> list[Entry]:
        """Plan and book in one step (no await): mark the victims and the target's memory."""
        budget = self.budget.total_mb - self.foreign_mb()
        booked = {e.key: e for e in self._entries() if e.reserved_mb > 0}
        plan = plan_load(entry.key, need, [_resident(e) for e in booked.values()], budget)
        if not plan.fits:
            raise BackendUnavailableError(
                f"model {entry.key!r} does not fit: {plan.reason}", retry_after=RETRY_AFTER_FULL_S
            )
        victims = [booked[v] for v in plan.evict]
        for victim in victims:
            victim.move("unload")
        entry.move("load", reserve_mb=need)
        return victims

    async def _load(self, entry: Entry, victims: list[Entry]) -> None:
        attributes = {"gen_ai.request.model": entry.id, "konsilium.model.backend": entry.manifest.backend_name,
                      "konsilium.load.evicted": [v.key for v in victims]}  # fmt: skip
        with _tracer.start_as_current_span("model load", attributes=attributes):
            await self._evict_and_load(entry, victims)

    async def _evict_and_load(self, entry: Entry, victims: list[Entry]) -> None:
        for victim in victims:
            log.info("evicting %s (%d MB) for %s", victim.key, victim.reserved_mb, entry.key)
            await self.unload(victim, "evicted")
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
        log.info("loaded %s in %.2f s (%d MB)", entry.key, entry.load_seconds, entry.reserved_mb)

    async def unload(self, entry: Entry, reason: UnloadReason) -> None:
        """Callers mark the entry `unloading` first; a load booked meanwhile keeps its state."""
        await entry.backend.unload()
        self._observer.unloaded(entry.id, reason)
        entry.move("unloaded")

    def _fail(self, entry: Entry, message: str) -> None:
        self._observer.load_failed(entry.id)
        entry.move("load_failed")
        entry.last_error = message
        entry.failed_until = self._clock() + self.config.load_failure_cooldown_s

    def _retry(self) -> int:
        return max(1, round(self.config.load_failure_cooldown_s))

    # ---- idle unload (every entry: a candidate left idle goes too) ---------------------
    async def sweep_idle(self) -> None:
        while True:
            idle_limits = [m.idle_unload_seconds for m in self.config.models if m.idle_unload_seconds]
            await asyncio.sleep(min(5.0, max(0.1, min(idle_limits, default=20.0) / 4)))
            for entry in self.idle_expired():
                log.info("unloading %s after %.0f s idle", entry.id, entry.manifest.idle_unload_seconds or 0)
                try:
                    await self.unload(entry, "idle")
                except Exception:  # the sweeper outlives any one model's failure
                    log.exception("idle unload of %s failed", entry.id)

    def idle_expired(self) -> list[Entry]:
        """Marks (no await between the check and the mark) and returns the models to unload now."""
        now = self._clock()
        expired = [
            e
            for e in self._entries()
            if e.state == "ready"
            and e.leases == 0
            and e.manifest.idle_unload_seconds is not None
            and now - e.last_used >= e.manifest.idle_unload_seconds
        ]
        for entry in expired:
            entry.move("unload")
        return expired


def _resident(e: Entry) -> Resident:
    return Resident(
        id=e.key,
        memory_mb=e.reserved_mb,
        last_used=e.last_used,
        pinned=e.manifest.load == "eager" or e.state != "ready",
        leases=e.leases,
    )


def ready(entry: Entry) -> bool:
    """Loaded, and its process still alive: one that died since is loaded again (a new load)."""
    return entry.state == "ready" and entry.backend.health().ready


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
