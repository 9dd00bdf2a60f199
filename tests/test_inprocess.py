"""The in-process tier: the whole app (`create_app` with scripted backends and an injected
clock), driven over ASGI. Lifecycle transitions, eviction, fallback before the first byte,
breakers opening, half-opening and closing, queue overflow and stream error frames — each in
milliseconds, with no process started (`tests/scripted.py` says what the double stands in for)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from entrypoints.app import create_app
from gateway.services import Services
from konsilium.config import Config, RoleRoute, RoutingConfig, TargetRef
from konsilium.errors import BackendError, ModelLoadError
from konsilium.manifest import Manifest
from model_store.lifecycle import LifecycleError, transition
from tests.scripted import ScriptedBackend, answer
from tests.servers import SMOLLM2

Client = httpx.AsyncClient


def model(model_id: str, **options: Any) -> Manifest:
    """A manifest of a local model; its backend is the scripted double."""
    return Manifest(id=model_id, path=str(SMOLLM2), skip_checksum=True, **options)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ask(target: str = "a", **fields: Any) -> dict[str, Any]:
    return {"model": target, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}


@contextlib.asynccontextmanager
async def serving(
    backends: dict[str, ScriptedBackend], clock: Clock | None = None, **settings: Any
) -> AsyncIterator[tuple[Client, Services]]:
    models = settings.pop("models", None) or [model(name) for name in backends]
    config = Config(models=models, memory_budget_mb=1000, **settings)
    app = create_app(config, backends=backends, clock=clock)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))  # in this event loop
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://konsilium") as client:
        yield client, app.state.services


def states(services: Services) -> dict[str, str]:
    return {v.id: v.state for v in services.store.view()}


async def test_a_model_moves_through_its_lifecycle() -> None:
    a = ScriptedBackend("a")
    async with serving({"a": a}) as (client, services):
        assert states(services) == {"a": "unloaded"}
        assert (await client.post("/v1/chat/completions", json=ask())).status_code == 200
        assert (states(services), a.loads) == ({"a": "ready"}, 1)
        unloaded = await client.post("/admin/models/a/unload")
        assert (unloaded.json()["state"], unloaded.json()["reserved_mb"], a.unloads) == ("unloaded", 0, 1)
        loaded = await client.post("/admin/models/a/load")
        assert (loaded.json()["state"], loaded.json()["reserved_mb"], a.loads) == ("ready", 100, 2)
        a.state = "unloaded"  # its process died
        assert states(services) == {"a": "unloaded"}, "a dead process shows as unloaded"
        assert (await client.post("/v1/chat/completions", json=ask())).status_code == 200
        assert a.loads == 3, "the next request loaded it again, through the store"


def test_the_transition_table_refuses_what_it_does_not_know() -> None:
    assert transition("unloaded", "load") == "loading"
    assert transition("loading", "shutdown") == "unloaded"
    # a request for a model being unloaded books a new load; the old unload then leaves it be
    assert transition(transition("unloading", "load"), "unloaded") == "loading"
    with pytest.raises(LifecycleError):
        transition("unloading", "loaded")


async def test_a_failed_load_cools_down_then_retries() -> None:
    clock = Clock()
    a = ScriptedBackend("a", load_error=ModelLoadError("weights unreadable"))
    async with serving({"a": a}, clock, load_failure_cooldown_s=10) as (client, services):
        first = await client.post("/v1/chat/completions", json=ask())
        assert (first.status_code, first.json()["error"]["code"], states(services)) == (
            503,
            "model_load_failed",
            {"a": "failed"},
        )
        again = await client.post("/v1/chat/completions", json=ask())
        assert (again.status_code, again.headers["retry-after"], a.loads) == (503, "10", 1), "no retry while cooling"
        clock.now += 11
        a.load_error = None
        assert (await client.post("/v1/chat/completions", json=ask())).status_code == 200
        assert (a.loads, states(services)) == (2, {"a": "ready"})


async def test_the_least_recently_used_model_is_evicted_for_another() -> None:
    clock = Clock()
    backends = {name: ScriptedBackend(name, memory_mb=400) for name in ("a", "b", "c")}
    async with serving(backends, clock) as (client, services):
        for name in ("a", "b"):
            clock.now += 1
            assert (await client.post("/v1/chat/completions", json=ask(name))).status_code == 200
        clock.now += 1
        assert (await client.post("/v1/chat/completions", json=ask("c"))).status_code == 200
        assert states(services) == {"a": "unloaded", "b": "ready", "c": "ready"}
        assert services.store.budget_view().models == {"b": 400, "c": 400}


async def test_a_failure_before_the_first_byte_falls_back_and_says_so() -> None:
    backends = {"a": ScriptedBackend("a", replies=[[BackendError("crashed")]]), "b": ScriptedBackend("b")}
    routing = RoutingConfig(roles={"dev": RoleRoute(targets=[TargetRef(model="a"), TargetRef(model="b")])})
    async with serving(backends, routing=routing) as (client, _):
        reply = await client.post("/v1/chat/completions", json=ask("auto", stream=True))
        assert reply.status_code == 200
        assert (reply.headers["x-konsilium-model"], reply.headers["x-konsilium-fallbacks"]) == ("b", "a")
        assert reply.text.endswith("data: [DONE]\n\n")


async def test_a_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    a = ScriptedBackend("a", replies=[answer(), [BackendError("crashed")], [BackendError("crashed")]])
    routing = RoutingConfig(breaker_failures=2, breaker_cooldown_s=30)
    async with serving({"a": a}, clock, routing=routing) as (client, _):
        # loaded first: a request that loads the last target is committed at its `Loading` notice
        assert (await client.post("/v1/chat/completions", json=ask())).status_code == 200

        async def breaker() -> str:
            models = (await client.get("/admin/models")).json()["models"]
            state: str = models[0]["breaker"]
            return state

        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=ask())).status_code == 502
        assert await breaker() == "open"
        refused = await client.post("/v1/chat/completions", json=ask())
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "all_targets_failed")
        assert "circuit breaker open" in refused.json()["error"]["message"]
        clock.now += 31
        assert await breaker() == "half_open"
        assert (await client.post("/v1/chat/completions", json=ask())).status_code == 200, "the probe"
        assert await breaker() == "closed"


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


async def test_a_full_queue_is_a_429_and_the_queue_drains() -> None:
    gate = asyncio.Event()
    a = ScriptedBackend("a", replies=[[gate, *answer("first")], answer("second")])
    async with serving({"a": a}, models=[model("a", max_concurrency=1, max_queue=1)]) as (client, services):
        store = services.store
        first = asyncio.create_task(client.post("/v1/chat/completions", json=ask()))
        await wait_until(lambda: store.view_of("a").in_flight == 1)
        second = asyncio.create_task(client.post("/v1/chat/completions", json=ask()))
        await wait_until(lambda: store.view_of("a").queued == 1)
        third = await client.post("/v1/chat/completions", json=ask())
        assert (third.status_code, third.headers["retry-after"], third.json()["error"]["code"]) == (
            429,
            "1",
            "rate_limit_exceeded",
        )
        gate.set()
        texts = [(await task).json()["choices"][0]["message"]["content"] for task in (first, second)]
        assert texts == ["first", "second"]


async def test_a_failure_after_the_first_byte_is_an_error_frame_then_done() -> None:
    a = ScriptedBackend("a", replies=[[*answer("par")[:1], BackendError("worker process exited (-9)")]])
    async with serving({"a": a}) as (client, _):
        reply = await client.post("/v1/chat/completions", json=ask(stream=True))
        frames = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line.startswith("data: ")]
        assert (reply.status_code, reply.text.split("\n\n")[0]) == (200, ": loading a")
        assert json.loads(frames[1])["choices"][0]["delta"] == {"content": "par"}
        assert json.loads(frames[-2]) == {
            "error": {
                "message": "worker process exited (-9)",
                "type": "server_error",
                "param": None,
                "code": "backend_error",
            }
        }
        assert frames[-1] == "[DONE]"
