"""`create_app`: builds the object graph and the Litestar application around it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from litestar import Litestar
from litestar.datastructures import State

from gateway import admin, completions, models
from gateway.errors import render
from gateway.services import Services
from konsilium.config import Config
from model_store.backend import Backend
from model_store.store import ModelStore
from routing.router import Router, load_routing_rules


def create_app(
    config: Config,
    *,
    backends: Mapping[str, Backend] | None = None,
    clock: Callable[[], float] | None = None,
) -> Litestar:
    store = ModelStore(config, backends, clock=clock or time.monotonic)
    router = Router(config, load_routing_rules(config), clock=clock or time.monotonic)
    services = Services(config=config, store=store, router=router)
    return Litestar(
        route_handlers=[
            completions.chat_completions,
            completions.completions,
            models.list_models,
            models.retrieve_model,
            models.health,
            models.ready,
            admin.admin_models,
            admin.admin_load,
            admin.admin_unload,
            admin.admin_budget,
            admin.admin_route,
        ],
        exception_handlers={Exception: render},
        state=State({"services": services}),
        on_startup=[store.start],
        on_shutdown=[store.close],
        request_max_body_size=config.max_body_bytes,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
