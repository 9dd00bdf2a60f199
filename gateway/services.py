"""What the handlers need, built once by `create_app` and injected (no module-level globals)."""

from __future__ import annotations

from dataclasses import dataclass

from konsilium.config import Config
from konsilium.observability.metrics import Metrics
from model_store.store import ModelStore
from routing.router import Router


@dataclass(frozen=True)
class Services:
    config: Config
    store: ModelStore
    router: Router
    metrics: Metrics | None = None  # None: metrics are off
