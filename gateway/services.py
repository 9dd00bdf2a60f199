"""What the handlers need, built once by `create_app` and injected (no module-level globals).

Handlers read plain views from the store and the router (`store.view()`, `router.view()`) and
send inference through the dispatcher; they never touch an entry, a backend or a breaker.
"""

from __future__ import annotations

from dataclasses import dataclass

from konsilium.config import Config
from konsilium.observability.metrics import Metrics
from model_store.store import ModelStore
from routing.dispatch import Dispatcher
from routing.router import Router


@dataclass(frozen=True)
class Services:
    config: Config
    store: ModelStore
    router: Router
    dispatcher: Dispatcher
    metrics: Metrics | None = None  # None: metrics are off
