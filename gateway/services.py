"""What the handlers need, built once by `create_app` and injected (no module-level globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from konsilium.config import Config
from model_store.registry import ModelRegistry


@dataclass(frozen=True)
class Services:
    config: Config
    registry: ModelRegistry
    clock: Callable[[], float] = time.time
