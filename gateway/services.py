"""What the handlers need, built once by `create_app` and injected (no module-level globals).

Handlers read plain views from the store and the router (`store.view()`, `router.view()`) and
send inference through the dispatcher (or the council, which dispatches each of its calls);
they never touch an entry, a backend or a breaker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.recent import RecentRequests
from gateway.responses.store import ResponseStore
from konsilium.config import Config
from konsilium.observability.metrics import Metrics
from konsilium.tenancy.service import Tenancy
from model_store.store import ModelStore
from routing.council.convene import Council
from routing.dispatch import Dispatcher
from routing.router import Router

if TYPE_CHECKING:
    from gateway.reload import Reloader
    from model_store.staging import Stager


@dataclass(frozen=True)
class Services:
    config: Config
    store: ModelStore
    router: Router
    dispatcher: Dispatcher
    council: Council
    tenancy: Tenancy | None = None  # keys and limits (None: not in this app, e.g. a bare test)
    metrics: Metrics | None = None  # None: metrics are off
    responses: ResponseStore | None = None  # stored Responses API answers (None: store nothing)
    recent: RecentRequests | None = None  # the last requests answered, for the status page (None: kept nowhere)
    stager: Stager | None = None  # staged model updates (None: not in this app)
    reloader: Reloader | None = None  # None: started without a config source, nothing to reload
    started: int = field(default_factory=lambda: int(time.time()))  # `created` of what has no file
