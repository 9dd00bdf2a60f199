"""The router's fallback loop in-process: what counts toward a breaker, and what the first-event
timeout measures. The targets are scripted event sources (`scripted`), test doubles for the
store's streams, so each case runs in milliseconds and says exactly what happened when."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import pytest

from konsilium.config import Config, RoutingConfig
from konsilium.errors import (
    BackendError,
    BackendTimeoutError,
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    RequestFailedError,
)
from konsilium.manifest import Manifest
from model_store.notices import Admitted, Loading, Queued, StoreEvent
from model_store.types import Finish, TextDelta, Usage
from routing.policy import RouteDecision
from routing.router import Router
from routing.rules import RoutingRules
from tests.servers import SMOLLM2

FINISH = Finish(reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1))
TIMEOUT_MS = 200


def router(**routing: object) -> Router:
    models = [
        Manifest(id="local", path=str(SMOLLM2)),  # a process Konsilium runs
        Manifest(id="remote", format="remote", url="http://127.0.0.1:9/v1"),  # a server it does not
    ]
    settings = {"local_timeout_ms": TIMEOUT_MS, "breaker_failures": 1, **routing}
    return Router(Config(models=models, routing=RoutingConfig(**settings)), RoutingRules())


def decision(*chain: str) -> RouteDecision:
    return RouteDecision(target=chain[0], fallbacks=chain[1:], reason="test")


Step = StoreEvent | GatewayError | float  # a float: that many seconds of silence


def scripted(steps: dict[str, list[Step]]) -> Callable[[str], AsyncGenerator[StoreEvent, None]]:
    """A test double for `store.stream(target, request)`: yields, sleeps or raises as scripted."""

    async def events(target: str) -> AsyncGenerator[StoreEvent, None]:
        for step in steps[target]:
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, GatewayError):
                raise step
            else:
                yield step

    return events


@pytest.mark.parametrize(
    "error",
    [
        RequestFailedError("the worker failed on this request and carries on"),
        RateLimitError("model 'local' is busy", retry_after=1),
        InvalidRequestError("unsupported JSON schema", param="response_format.json_schema.schema"),
    ],
)
async def test_errors_caused_by_the_request_or_load_leave_the_breaker_closed(error: GatewayError) -> None:
    routed = router()
    for _ in range(3):
        with pytest.raises(GatewayError):
            await routed.open_first(decision("local"), scripted({"local": [error]}))
    assert routed.breakers["local"].state() == "closed"


async def test_a_target_fault_opens_the_breaker() -> None:
    routed = router()
    with pytest.raises(BackendError):
        await routed.open_first(decision("local"), scripted({"local": [BackendError("worker process exited (-9)")]}))
    assert routed.breakers["local"].state() == "open"


async def test_a_refused_probe_frees_the_probe_slot() -> None:
    clock = [0.0]
    routed = Router(
        Config(models=[Manifest(id="local", path=str(SMOLLM2))], routing=RoutingConfig(breaker_failures=1)),
        RoutingRules(),
        clock=lambda: clock[0],
    )
    with pytest.raises(BackendError):
        await routed.open_first(decision("local"), scripted({"local": [BackendError("crashed")]}))
    clock[0] = 31.0  # past the cooldown: the next request is the probe
    with pytest.raises(InvalidRequestError):
        await routed.open_first(decision("local"), scripted({"local": [InvalidRequestError("bad schema")]}))
    assert not routed.breakers["local"].blocked(), "the next request may probe again"
    opened = await routed.open_first(decision("local"), scripted({"local": [TextDelta(text="hi"), FINISH]}))
    assert (opened.target, routed.breakers["local"].state()) == ("local", "closed")


async def test_waiting_in_the_queue_does_not_count_against_the_timeout() -> None:
    wait = TIMEOUT_MS / 1000 * 3
    steps: list[Step] = [Queued(model="local"), wait, Admitted(model="local"), TextDelta(text="hi"), FINISH]
    opened = await router().open_first(decision("local", "remote"), scripted({"local": steps, "remote": []}))
    assert (opened.target, opened.first, opened.failed) == ("local", TextDelta(text="hi"), [])


async def test_the_timeout_starts_again_once_the_request_holds_a_slot() -> None:
    steps: list[Step] = [Queued(model="local"), 0.05, Admitted(model="local"), TIMEOUT_MS / 1000 * 2, FINISH]
    remote: list[Step] = [TextDelta(text="from remote"), FINISH]
    opened = await router().open_first(decision("local", "remote"), scripted({"local": steps, "remote": remote}))
    assert (opened.target, [a.error for a in opened.failed]) == ("remote", ["backend_timeout"])


async def test_a_slow_process_we_run_falls_back_without_a_strike() -> None:
    routed = router()
    steps = {"local": [TIMEOUT_MS / 1000 * 2, FINISH], "remote": [TextDelta(text="x"), FINISH]}
    for _ in range(2):
        opened = await routed.open_first(decision("local", "remote"), scripted(steps))
        assert opened.target == "remote"
    assert routed.breakers["local"].state() == "closed"


async def test_a_silent_server_we_do_not_run_gets_a_strike() -> None:
    routed = router()
    steps = {"remote": [TIMEOUT_MS / 1000 * 2, FINISH], "local": [TextDelta(text="x"), FINISH]}
    opened = await routed.open_first(decision("remote", "local"), scripted(steps))
    assert (opened.target, routed.breakers["remote"].state()) == ("local", "open")


async def test_the_last_resort_process_is_given_the_time_its_prefill_takes() -> None:
    steps: list[Step] = [TIMEOUT_MS / 1000 * 2, TextDelta(text="after a long prefill"), FINISH]
    opened = await router().open_first(decision("local"), scripted({"local": steps}))
    assert opened.first == TextDelta(text="after a long prefill")


async def test_a_silent_last_resort_server_still_times_out() -> None:
    with pytest.raises(BackendTimeoutError):
        await router().open_first(decision("remote"), scripted({"remote": [TIMEOUT_MS / 1000 * 2, FINISH]}))


async def test_the_last_target_is_returned_at_its_load_notice() -> None:
    steps: list[Step] = [Queued(model="local"), Admitted(model="local"), Loading(model="local"), FINISH]
    opened = await router().open_first(decision("local"), scripted({"local": steps}))
    assert opened.first == Loading(model="local")
