"""Fair queueing, disconnects and worker crashes, observed through real processes.

Process states (worker pids, in-flight and queued counts from `/ready`) are the outcomes; the
polls below only bound how long we wait for a state, they measure nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest

from tests.servers import MODEL_ID, Server, pid_alive

pytestmark = pytest.mark.e2e

# The model keeps counting for far longer than any wait below: a reliably long generation.
LONG = {"model": MODEL_ID, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1500, "temperature": 0}
SHORT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def data_lines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line


async def open_long_stream(http: httpx.AsyncClient, server: Server) -> tuple[httpx.Response, AsyncIterator[str]]:
    """A long stream whose first two frames have arrived; the rest is left to the caller."""
    request = http.build_request("POST", f"{server.v1}/completions", json={**LONG, "stream": True})
    response = await http.send(request, stream=True)
    assert response.status_code == 200
    lines = data_lines(response)
    for _ in range(2):
        await anext(lines)
    return response, lines


def check_restart_on_demand(server: Server) -> None:
    """The gateway is up, the model is unloaded, and /ready still says yes: the next request restarts it."""
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    state = server.model_state()
    assert (state["state"], state["ready"], state["pid"]) == ("unloaded", False, None)
    assert httpx.get(f"{server.base_url}/ready").status_code == 200


def stopped_within_a_second(server: Server) -> None:
    """The worker itself stopped generating: LONG would run for ~25 s more if the cancel were
    lost (a token takes ~17 ms here, so a cancel lands in far less than a second)."""
    wait_for(lambda: server.model_state()["generating"] is False, "the worker to stop", timeout_s=1.0)
    assert server.model_state()["in_flight"] == 0


def short_answer(server: Server) -> str:
    response = httpx.post(f"{server.v1}/chat/completions", json=SHORT, timeout=60)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


async def test_disconnects_free_the_queue_and_the_worker(server: Server) -> None:
    reference = short_answer(server)
    slots = server.model_state()["max_concurrency"]
    assert slots == 4, "the default for a llama.cpp model"
    async with httpx.AsyncClient(timeout=120) as http:
        streams = [await open_long_stream(http, server) for _ in range(slots)]  # lines kept: open
        assert server.model_state()["in_flight"] == slots
        queued = asyncio.create_task(http.post(f"{server.v1}/completions", json=LONG))
        await asyncio.to_thread(wait_for, lambda: server.model_state()["queued"] == 1, "a queued request")
        queued.cancel()  # the client of the queued request leaves
        await asyncio.to_thread(wait_for, lambda: server.model_state()["queued"] == 0, "the queue to empty")
        assert server.model_state()["in_flight"] == slots, "the streams are still generating"
        for streaming, _ in streams:
            await streaming.aclose()  # the streaming clients leave mid-stream
        await asyncio.to_thread(stopped_within_a_second, server)
        assert server.model_state()["in_flight"] == 0
    assert short_answer(server) == reference


async def test_non_streaming_disconnect_stops_generation(server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        pending = asyncio.create_task(http.post(f"{server.v1}/completions", json=LONG))
        await asyncio.to_thread(wait_for, lambda: server.model_state()["generating"] is True, "generation to start")
        pending.cancel()
        await asyncio.to_thread(stopped_within_a_second, server)


async def test_two_concurrent_streams_both_complete_untouched(server: Server) -> None:
    prompts = ["Name three colors.", "What is 2 + 2?"]
    bodies = [{**SHORT, "messages": [{"role": "user", "content": p}], "max_tokens": 24} for p in prompts]
    async with openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0) as sdk:
        alone = [(await sdk.chat.completions.create(**b)).choices[0].message.content for b in bodies]

        async def stream(body: dict[str, Any]) -> str:
            chunks = await sdk.chat.completions.create(stream=True, **body)
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

        together = await asyncio.gather(*(stream(b) for b in bodies))
    assert together == alone


async def test_worker_killed_mid_stream(server: Server) -> None:
    old_pid = server.model_state()["pid"]
    assert isinstance(old_pid, int)
    async with httpx.AsyncClient(timeout=120) as http:
        response, lines = await open_long_stream(http, server)
        os.kill(old_pid, signal.SIGKILL)
        tail = [line async for line in lines]
        await response.aclose()
    assert tail[-1] == "data: [DONE]"
    error = json.loads(tail[-2][len("data: ") :])
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "backend_error"
    assert "worker process exited" in error["error"]["message"]
    await asyncio.to_thread(check_restart_on_demand, server)
    assert short_answer(server)
    new_pid = server.model_state()["pid"]
    assert isinstance(new_pid, int)
    assert new_pid != old_pid
    assert not pid_alive(old_pid)
