"""Several streams at once on one llama.cpp worker (continuous batching), on the real SmolLM2.

One worker with four slots. Outcomes are exact texts (temperature 0: a request answers the same
alone or beside three others), the slot counts `/ready` reports while requests overlap, error
frames, worker pids and `usage.prompt_tokens_details.cached_tokens`. The polls only bound how
long we wait for a state; they measure nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.openapi import assert_valid
from tests.servers import MODEL_ID, Server, llama_model, pid_alive, run_server
from tests.test_e2e_resilience import LONG, data_lines, stopped_within_a_second, wait_for

pytestmark = pytest.mark.e2e

SLOTS = 4
QUESTIONS = ["Name three colors.", "What is 2 + 2?", "Say hello in French.", "What is the capital of Italy?"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = llama_model(max_concurrency=SLOTS, n_ctx=1024, max_queue=8)
    with run_server(tmp_path_factory.mktemp("batched"), [model]) as server:
        yield server


def chat(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": question}], "max_tokens": 40,
            "temperature": 0, **extra}  # fmt: skip


async def post(http: httpx.AsyncClient, server: Server, body: dict[str, Any]) -> dict[str, Any]:
    reply = await http.post(f"{server.v1}/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def content(answer: dict[str, Any]) -> str:
    text: str = answer["choices"][0]["message"]["content"]
    return text


class Stream:
    """A stream whose first token has arrived, so its request holds a slot; `rest()` reads it out."""

    def __init__(self, response: httpx.Response, lines: AsyncIterator[str], seen: list[str]) -> None:
        self.response, self._lines, self._frames = response, lines, seen

    @classmethod
    async def open(cls, http: httpx.AsyncClient, server: Server, body: dict[str, Any]) -> Stream:
        path = "/completions" if "prompt" in body else "/chat/completions"
        request = http.build_request("POST", server.v1 + path, json={**body, "stream": True})
        response = await http.send(request, stream=True)
        assert response.status_code == 200
        lines = data_lines(response)
        seen = []
        while not any(_text(frame) for frame in seen):
            seen.append(await anext(lines))
        return cls(response, lines, seen)

    async def rest(self) -> list[str]:
        """Every frame of the stream, the ones read on opening included."""
        self._frames.extend([line async for line in self._lines])
        await self.response.aclose()
        return self._frames

    async def text(self) -> str:
        frames = await self.rest()
        assert frames[-1] == "data: [DONE]"
        return "".join(_text(frame) for frame in frames[:-1])


def _text(frame: str) -> str:
    if frame == "data: [DONE]":
        return ""
    choices = json.loads(frame[len("data: ") :])["choices"]
    return "".join((c.get("delta", {}).get("content") or c.get("text") or "") for c in choices)


async def test_four_concurrent_streams_each_equal_their_single_stream_answer(batched: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        alone = [content(await post(http, batched, chat(q))) for q in QUESTIONS]
        streams = [await Stream.open(http, batched, chat(q)) for q in QUESTIONS]
        state = batched.model_state()
        assert (state["in_flight"], state["queued"]) == (SLOTS, 0), "all four decode together, none waits"
        together = await asyncio.gather(*(s.text() for s in streams))
    assert together == alone


async def test_a_cancelled_slot_is_taken_by_the_queued_request(batched: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        reference = content(await post(http, batched, chat(QUESTIONS[0])))
        streams = [await Stream.open(http, batched, LONG) for _ in range(SLOTS)]
        queued = asyncio.create_task(post(http, batched, chat(QUESTIONS[0])))
        await asyncio.to_thread(wait_for, lambda: batched.model_state()["queued"] == 1, "a queued request")
        await streams[0].response.aclose()  # one client leaves mid-stream: its slot goes to the queue
        assert content(await queued) == reference
        state = batched.model_state()
        assert (state["in_flight"], state["queued"]) == (SLOTS - 1, 0), "the other three still generate"
        for stream in streams[1:]:
            await stream.response.aclose()
        await asyncio.to_thread(stopped_within_a_second, batched)


async def test_a_worker_killed_with_four_streams_in_flight_ends_all_four(batched: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        streams = [await Stream.open(http, batched, LONG) for _ in range(SLOTS)]
        old_pid = batched.model_state()["pid"]
        assert isinstance(old_pid, int)
        os.kill(old_pid, signal.SIGKILL)
        tails = await asyncio.gather(*(s.rest() for s in streams))
        for frames in tails:
            assert frames[-1] == "data: [DONE]"
            error = json.loads(frames[-2][len("data: ") :])["error"]
            assert (error["type"], error["code"]) == ("server_error", "backend_error")
            assert "worker process exited" in error["message"]
        answer = await post(http, batched, chat(QUESTIONS[1]))
    assert content(answer)
    new_pid = batched.model_state()["pid"]
    assert isinstance(new_pid, int)
    assert new_pid != old_pid
    assert not pid_alive(old_pid)


async def test_json_and_a_forced_tool_call_beside_a_plain_stream(batched: Server) -> None:
    as_json = chat("Describe a cat as JSON with keys name and age.", response_format={"type": "json_object"})
    as_call = chat("What is the weather in Paris?", tools=[WEATHER],
                   tool_choice={"type": "function", "function": {"name": "get_weather"}})  # fmt: skip
    plain = chat(QUESTIONS[2], max_tokens=64)
    async with httpx.AsyncClient(timeout=120) as http:
        alone = [await post(http, batched, body) for body in (as_json, as_call)]
        text_alone = content(await post(http, batched, plain))
        stream = await Stream.open(http, batched, plain)
        beside = await asyncio.gather(post(http, batched, as_json), post(http, batched, as_call), stream.text())
    json_answer, call_answer, text = beside
    assert text == text_alone
    assert isinstance(json.loads(content(json_answer)), dict)
    assert content(json_answer) == content(alone[0])
    [call] = call_answer["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert call["function"]["arguments"] == alone[1]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert call_answer["choices"][0]["finish_reason"] == "tool_calls"
    assert_valid("CreateChatCompletionResponse", call_answer)


async def test_a_repeated_prefix_is_read_from_the_kv_cache(batched: Server) -> None:
    system = {"role": "system", "content": "You review Python code for bugs. " * 40}
    first = chat("Is `x = 1` fine?", max_tokens=8)
    first["messages"] = [system, *first["messages"]]
    second = {**first, "messages": [system, {"role": "user", "content": "Is `y = 2` fine?"}]}
    async with httpx.AsyncClient(timeout=120) as http:
        cold = await post(http, batched, {**first, "messages": [{**system, "content": system["content"] + "!"}]})
        once = await post(http, batched, first)
        again = await post(http, batched, first)
        other = await post(http, batched, second)
    usage = [a["usage"] for a in (cold, once, again, other)]
    prompt = once["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt - 1, usage
    assert content(again) == content(once)
    shared = other["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 240 < shared < other["usage"]["prompt_tokens"] - 5, usage  # the system prompt, not the question
    assert_valid("CreateChatCompletionResponse", again)


def test_ready_reports_slots(batched: Server) -> None:
    state = batched.model_state()
    assert (state["max_concurrency"], state["in_flight"], state["queued"]) == (SLOTS, 0, 0)
    assert Path(f"/proc/{state['pid']}").exists()


async def test_concurrent_requests_sharing_a_long_prefix(batched: Server) -> None:
    """One slot holds a long system prompt; four requests sharing it arrive at once: the one that
    lands in that slot reads it from the cache, the others compute it in theirs. (Their answers
    are not compared with the lone ones: with prompts this long they have been seen to differ,
    cause not isolated yet; see model_store/DESIGN.md, "Determinism".)"""
    system = {"role": "system", "content": "You are a strict reviewer of Python code. " * 50}
    asks = [{**chat(q, max_tokens=12), "messages": [system, {"role": "user", "content": q}]} for q in QUESTIONS]
    async with httpx.AsyncClient(timeout=120) as http:
        alone = [await post(http, batched, body) for body in asks]
        together = await asyncio.gather(*(post(http, batched, body) for body in asks))
    assert [a["usage"]["prompt_tokens"] for a in together] == [a["usage"]["prompt_tokens"] for a in alone]
    assert all(content(a) and a["choices"][0]["finish_reason"] in ("stop", "length") for a in together)
    # one after another, each but the first finds the ~450-token system prompt in the slot
    assert [a["usage"]["prompt_tokens_details"]["cached_tokens"] > 400 for a in alone] == [False, True, True, True]
    cached = sorted(a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in together)
    assert cached[-1] > 400, cached  # the one that found the ~450-token system prompt in its slot
