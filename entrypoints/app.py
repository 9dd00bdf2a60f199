"""`create_app`: builds the object graph (store, router, dispatcher, telemetry) and the Litestar
application around it; the one place that wires every layer together."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware

from gateway import admin, completions, models, status, ui, updates
from gateway import metrics as gateway_metrics
from gateway.auth import KeyAuth
from gateway.embeddings import routes as embeddings
from gateway.errors import render
from gateway.messages import routes as messages
from gateway.metrics import StateCollector
from gateway.observe import ObservedApp, Telemetry
from gateway.peer import ForwardedClientMiddleware
from gateway.recent import RecentRequests
from gateway.reload import Reloader
from gateway.responses import routes as responses
from gateway.responses.store import ResponseStore
from gateway.services import Services
from konsilium.config import Config
from konsilium.config_source import ConfigSource
from konsilium.net import is_loopback
from konsilium.observability.metrics import Metrics
from konsilium.observability.tracing import setup_tracing
from konsilium.tenancy.service import Tenancy
from model_store.backend import Backend
from model_store.staging import Stager
from model_store.store import ModelStore
from routing.council.convene import Council
from routing.dispatch import Dispatcher
from routing.privacy import Scrubber
from routing.router import Router, load_routing_rules

log = logging.getLogger(__name__)


def build_dispatcher(config: Config) -> Dispatcher:
    """The request path without the HTTP layer (`konsilium route`, benchmarks): no process starts."""
    wiring = _Wiring(time.monotonic, None, None)
    return wiring.dispatcher(config, ModelStore(config), wiring.router(config))


class _Wiring:
    """What a config decides above the store: built at start-up, and again by a reload."""

    def __init__(self, clock: Callable[[], float], metrics: Metrics | None, observer: Telemetry | None) -> None:
        self._clock, self._metrics, self._observer = clock, metrics, observer

    def router(self, config: Config) -> Router:
        return Router(config, load_routing_rules(config), clock=self._clock, observer=self._metrics)

    def dispatcher(self, config: Config, store: ModelStore, router: Router) -> Dispatcher:
        return Dispatcher(store, router, observer=self._observer, scrubber=Scrubber(config.privacy.denylist))

    def services(self, config: Config, services: Services, router: Router) -> Services:
        dispatcher = self.dispatcher(config, services.store, router)
        council = Council(dispatcher, observer=self._observer)
        return dataclasses.replace(services, config=config, router=router, dispatcher=dispatcher, council=council)


def create_app(
    config: Config,
    *,
    backends: Mapping[str, Backend] | None = None,
    clock: Callable[[], float] | None = None,
    source: ConfigSource | None = None,
    watch: bool = False,
) -> Litestar:
    """`source`: where `config` was read from (`konsilium serve`): it can be reloaded, and its
    manifests rewritten by a promote; without one, `/admin/reload` refuses and a promoted
    revision is not written anywhere."""
    telemetry = config.telemetry
    provider = setup_tracing(telemetry)
    metrics = Metrics() if telemetry.metrics else None
    observer = Telemetry(metrics, telemetry)
    wiring = _Wiring(clock or time.monotonic, metrics, observer)
    store = ModelStore(config, backends, clock=clock or time.monotonic, observer=metrics)
    router = wiring.router(config)
    dispatcher = wiring.dispatcher(config, store, router)
    council = Council(dispatcher, observer=observer)
    state = State()
    swapping = asyncio.Lock()  # a reload, a promote, a rollback: one at a time
    reloader = None if source is None else Reloader(state, source, wiring, lock=swapping, watch=watch)
    files = source or ConfigSource()
    stager = Stager(
        store, lambda model_id: files.manifest_file(store.config, model_id), lock=swapping,
        on_step=metrics.model_updated if metrics is not None else None,
    )  # fmt: skip
    tenancy = Tenancy(config, observer=metrics)
    kept = config.responses
    stored = ResponseStore(
        max_items=kept.store_max_items, max_bytes=int(kept.store_max_mb * 2**20), ttl_s=kept.store_ttl_s,
        clock=clock or time.monotonic,
    )  # fmt: skip
    recent = RecentRequests(record_content=telemetry.record_content)
    services = Services(
        config=config, store=store, router=router, dispatcher=dispatcher, council=council, tenancy=tenancy,
        metrics=metrics, responses=stored, recent=recent, stager=stager, reloader=reloader,
    )  # fmt: skip
    state.services = services
    if metrics is not None:
        metrics.registry.register(StateCollector(store, lambda: state.services.router, tenancy))
    return Litestar(
        route_handlers=[
            *([gateway_metrics.metrics] if metrics is not None else []),
            completions.chat_completions,
            completions.completions,
            embeddings.create_embeddings,
            responses.create_response,
            responses.retrieve_response,
            responses.delete_response,
            messages.create_message,
            messages.count_tokens,
            models.list_models,
            models.retrieve_model,
            models.health,
            models.ready,
            admin.admin_models,
            admin.admin_load,
            admin.admin_unload,
            admin.admin_budget,
            admin.admin_route,
            admin.admin_keys,
            updates.admin_reload,
            updates.admin_stage,
            updates.admin_promote,
            updates.admin_rollback,
            updates.admin_update,
            status.admin_status,
            ui.page,
            ui.asset,
        ],
        exception_handlers={Exception: render},
        middleware=[
            DefineMiddleware(ForwardedClientMiddleware, trusted_proxies=config.trusted_proxies),
            DefineMiddleware(ObservedApp, metrics=metrics, recent=recent),
            DefineMiddleware(KeyAuth, tenancy=tenancy, metrics=metrics),
        ],
        state=state,
        on_startup=[
            tenancy.start,
            lambda: warn_if_open(config, tenancy),
            store.start,
            *([reloader.start] if reloader else []),
        ],
        on_shutdown=[
            *([reloader.close] if reloader else []),
            store.close,
            tenancy.close,
            *([] if provider is None else [lambda: provider.force_flush()]),
        ],
        request_max_body_size=config.max_body_bytes,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )


def warn_if_open(config: Config, tenancy: Tenancy) -> None:
    if not is_loopback(config.host) and tenancy.ring.loaded and not tenancy.ring.enabled and not tenancy.required:
        log.warning(
            "listening on %s without API keys: whoever reaches port %d can use every model "
            "(create one with `konsilium keys create --name NAME`)", config.host, config.port,
        )  # fmt: skip
