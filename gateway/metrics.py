"""`GET /metrics`: the registry's counters and histograms, plus gauges read at scrape time from
the store's and the router's views (queue depth, model state, memory, breakers, resident adapters)
and whether key limits are shared through Redis now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from litestar import Request, Response, get
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.services import Services
from konsilium.tenancy.service import Tenancy
from model_store.backend import State
from model_store.store import ModelStore
from routing.router import Router

MIB = 1024 * 1024
EXPOSITION_FORMAT = "text/plain; version=0.0.4"  # the text format every Prometheus reads (Litestar adds the charset)
STATES: tuple[State, ...] = ("unloaded", "loading", "ready", "unloading", "failed")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class StateCollector(Collector):
    def __init__(self, store: ModelStore, router: Callable[[], Router], tenancy: Tenancy | None = None) -> None:
        self._store = store
        self._router = router  # the one serving now (a reload swaps it)
        self._tenancy = tenancy

    def collect(self) -> Iterator[Metric]:
        store = self._store
        state = GaugeMetricFamily(
            "konsilium_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        queued = GaugeMetricFamily("konsilium_queue_depth", "Requests waiting for a model's slot", labels=["model"])
        running = GaugeMetricFamily("konsilium_requests_in_flight", "Requests a model is serving", labels=["model"])
        memory = GaugeMetricFamily("konsilium_model_memory_bytes", "Memory booked for a model", labels=["model"])
        adapters = GaugeMetricFamily(
            "konsilium_adapter_resident", "1 for each LoRA adapter resident on its base", labels=["model", "adapter"]
        )
        views = store.view()
        for view in views:
            for name in STATES:
                state.add_metric([view.id, name], float(view.state == name))
            queued.add_metric([view.id], view.queued)
            running.add_metric([view.id], view.in_flight)
            memory.add_metric([view.id], view.reserved_mb * MIB)
            for adapter in view.adapters:
                if adapter.resident:
                    adapters.add_metric([view.id, adapter.name], 1)
        yield from (state, queued, running, memory, adapters)
        budget = store.budget_view()
        yield GaugeMetricFamily("konsilium_memory_budget_bytes", "The memory budget", value=budget.total_mb * MIB)
        yield GaugeMetricFamily("konsilium_memory_used_bytes", "Memory booked by models", value=budget.used_mb * MIB)
        breakers = GaugeMetricFamily(
            "konsilium_breaker_state", "Circuit breaker per target: 0 closed, 1 half open, 2 open", labels=["target"]
        )
        for target, learned in self._router().view().items():
            breakers.add_metric([target], BREAKER_STATES[learned.breaker])
        yield breakers
        if self._tenancy is not None:
            yield GaugeMetricFamily(
                "konsilium_limiter_shared", "1 while key limits are decided in Redis (shared by replicas), else 0",
                value=float(self._tenancy.limiter.shared_up),
            )  # fmt: skip


@get("/metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    services: Services = request.app.state.services
    assert services.metrics is not None, "the route exists only with metrics on"
    return Response(content=generate_latest(services.metrics.registry), media_type=EXPOSITION_FORMAT)
