"""Hot reload: `POST /admin/reload`, `SIGHUP`, and `konsilium serve --watch` read the config and
its manifests again and apply them without a restart.

A reload is checked whole before anything changes: the file's problems (the same path-named
ones start-up prints), a changed setting that only a restart applies (`reload_plan.RESTART_ONLY`),
routing rules that do not load — any of them refuses it, and the running config stays. A valid
one is applied in one step of the event loop: the store takes the models (`ModelStore.apply`: new
ones join, changed ones get a new process while the old one finishes its requests, removed ones
finish theirs and unload), then a new router (inheriting what the old one learned), dispatcher and
council are swapped in as one `Services`. A request in flight keeps the `Services` it started
with; the next one gets the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any, Protocol

import msgspec

from gateway.services import Services
from konsilium.config import Config
from konsilium.config_source import ConfigSource
from konsilium.errors import ConfigError, InvalidConfigError
from konsilium.reload_plan import ModelChanges, restart_problems
from routing.router import Router

log = logging.getLogger(__name__)

WATCH_PERIOD_S = 1.0  # how often --watch looks at the files' modification times


class Wiring(Protocol):
    """How the application builds what a config decides (entrypoints/app.py)."""

    def router(self, config: Config) -> Router:
        """Raises `ConfigError` when the routing rules do not load."""

    def services(self, config: Config, services: Services, router: Router) -> Services:
        """A dispatcher and a council on the same store, with `router`."""


class ReloadReport(msgspec.Struct, frozen=True):
    config: str
    models: ModelChanges


class Reloader:
    def __init__(
        self, state: Any, source: ConfigSource, wiring: Wiring, *, lock: asyncio.Lock, watch: bool = False
    ) -> None:
        self._state = state  # the application's State: `state.services` is what the next request reads
        self._source = source
        self._wiring = wiring
        self._watch = watch
        self._lock = lock  # shared with promote and rollback: each sees the files as the other left them
        self._watcher: asyncio.Task[None] | None = None

    async def reload(self) -> ReloadReport:
        async with self._lock:
            services: Services = self._state.services
            metrics = services.metrics
            try:
                report = await self._reload(services)
            except InvalidConfigError as exc:
                log.error("config reload refused (the running config stays):\n  %s", "\n  ".join(exc.problems))
                if metrics is not None:
                    metrics.config_reloaded("refused")
                raise
            if metrics is not None:
                metrics.config_reloaded("applied")
            m = report.models
            log.info(
                "config reloaded from %s: added %s, removed %s, changed %s, updated %s",
                report.config, m.added or "-", m.removed or "-", m.changed or "-", m.updated or "-",
            )  # fmt: skip
            return report

    async def _reload(self, services: Services) -> ReloadReport:
        try:
            config = await asyncio.to_thread(self._source.load)
        except ConfigError as exc:
            raise InvalidConfigError(exc.problems) from exc
        running = services.store.config
        problems = restart_problems(running, config, self._source.name)
        if problems:
            raise InvalidConfigError(problems)
        try:
            router = await asyncio.to_thread(self._wiring.router, config)  # reads the rules' files
        except ConfigError as exc:  # the routing rules, checked by building them: nothing changed yet
            raise InvalidConfigError(exc.problems) from exc
        changes = await services.store.apply(config)
        router.inherit(services.router, fresh=changes.changed)  # on the loop, where its tables change
        self._state.services = self._wiring.services(config, services, router)
        return ReloadReport(config=self._source.name, models=changes)

    # ---- SIGHUP and --watch ----------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._quietly("SIGHUP")))
        if self._watch and self._source.path is None:
            log.warning("--watch: the built-in config has no file to watch (give --config)")
        elif self._watch:
            self._watcher = loop.create_task(self._watch_files(), name="config-watch")
            log.info("watching %s for changes", self._source.name)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _quietly(self, why: str) -> None:
        log.info("%s: reloading the config", why)
        with contextlib.suppress(InvalidConfigError):  # logged by reload(); the server goes on
            await self.reload()

    async def _watch_files(self) -> None:
        seen = await asyncio.to_thread(self._stamps)
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            now = await asyncio.to_thread(self._stamps)
            if now != seen:  # stamped before the reload reads them: a change during it is seen next time
                seen = now
                await self._quietly("a config file changed")

    def _stamps(self) -> dict[Path, tuple[int, int]]:
        config: Config = self._state.services.store.config
        stamps = {}
        for path in self._source.files(config):
            with contextlib.suppress(OSError):
                stat = path.stat()
                stamps[path] = (stat.st_mtime_ns, stat.st_size)
        return stamps
