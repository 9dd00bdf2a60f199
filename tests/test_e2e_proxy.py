"""The `openai` backend relaying to a second, real Konsilium process (an OpenAI-compatible server)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.cloud_double import VERDICT, cloud_director_double
from tests.openapi import assert_valid
from tests.servers import MODEL_ID, Server, free_port, llama_model, pid_alive, run_server

pytestmark = pytest.mark.e2e

PROXIED = "proxied-smollm2"
DOWN = "nobody-home"
ASK = {"messages": [{"role": "user", "content": "Name a fruit."}], "temperature": 0, "max_tokens": 16}


@pytest.fixture(scope="module")
def proxy(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models: list[dict[str, object]] = [
        {"id": PROXIED, "backend": "openai", "url": server.v1, "upstream_model": MODEL_ID, "context_length": 2048},
        {"id": DOWN, "backend": "openai", "url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 2},
    ]
    with run_server(tmp_path_factory.mktemp("proxy"), models) as running:
        yield running


@pytest.fixture
def via_proxy(proxy: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk


def test_non_streaming_answer_is_the_upstreams(client: openai.OpenAI, via_proxy: openai.OpenAI) -> None:
    direct = client.chat.completions.create(model=MODEL_ID, **ASK)
    raw = via_proxy.chat.completions.with_raw_response.create(model=PROXIED, **ASK)
    assert raw.headers["x-konsilium-model"] == PROXIED
    assert_valid("CreateChatCompletionResponse", json.loads(raw.content))
    relayed = raw.parse()
    assert relayed.model == PROXIED
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert relayed.usage is not None
    assert direct.usage is not None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(relayed.usage, n) for n in counts] == [getattr(direct.usage, n) for n in counts]
    # the same prompt again: the upstream read all of it but the last token from its KV cache
    assert relayed.usage.prompt_tokens_details is not None
    assert relayed.usage.prompt_tokens_details.cached_tokens == direct.usage.prompt_tokens - 1


def test_stream_is_relayed_with_usage(via_proxy: openai.OpenAI, client: openai.OpenAI) -> None:
    direct = client.chat.completions.create(model=MODEL_ID, **ASK).choices[0].message.content
    chunks = list(
        via_proxy.chat.completions.create(model=PROXIED, stream=True, stream_options={"include_usage": True}, **ASK)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_tool_calls_are_relayed(via_proxy: openai.OpenAI) -> None:
    fruit = {"type": "object", "properties": {"fruit": {"type": "string", "maxLength": 20}}, "required": ["fruit"]}
    tool: Any = {"type": "function", "function": {"name": "pick", "parameters": fruit}}
    choice: Any = {"type": "function", "function": {"name": "pick"}}
    whole = via_proxy.chat.completions.create(model=PROXIED, tools=[tool], tool_choice=choice, **ASK)
    with via_proxy.chat.completions.stream(model=PROXIED, tools=[tool], tool_choice=choice, **ASK) as stream:
        streamed = stream.get_final_completion()
    for reply in (whole, streamed):
        [call] = reply.choices[0].message.tool_calls or []
        assert call.function.name == "pick"  # type: ignore[union-attr]
        assert "fruit" in json.loads(call.function.arguments)  # type: ignore[union-attr]
        assert reply.choices[0].finish_reason == "tool_calls"


def test_text_completions_are_relayed(via_proxy: openai.OpenAI, client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"prompt": "The sky is", "max_tokens": 6, "temperature": 0}
    assert (
        via_proxy.completions.create(model=PROXIED, **args).choices[0].text
        == client.completions.create(model=MODEL_ID, **args).choices[0].text
    )


def test_upstream_client_errors_stay_client_errors(proxy: Server) -> None:
    body = {"model": PROXIED, "messages": [{"role": "user", "content": "word " * 3000}]}
    response = httpx.post(f"{proxy.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_unreachable_upstream_is_503_with_retry_after(proxy: Server) -> None:
    response = httpx.post(f"{proxy.v1}/chat/completions", json={"model": DOWN, **ASK}, timeout=60)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "model_unavailable")
    assert "unreachable" in error["message"]


def test_upstream_failure_mid_stream_becomes_an_error_frame(proxy: Server, server: Server) -> None:
    body = {"model": PROXIED, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", f"{proxy.v1}/completions", json=body, timeout=120) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        next(lines)
        worker_pid = server.model_state()["pid"]
        assert isinstance(worker_pid, int)
        os.kill(worker_pid, signal.SIGKILL)
        tail = list(lines)
    assert tail[-1] == "data: [DONE]"
    error = json.loads(tail[-2][len("data: ") :])["error"]
    assert (error["type"], error["code"]) == ("server_error", "backend_error")
    assert "worker process exited" in error["message"]


def test_shutdown_leaves_no_worker_behind(tmp_path: Path) -> None:
    with run_server(tmp_path, [llama_model("solo")]) as solo:
        pid = solo.model_state("solo")["pid"]
        assert isinstance(pid, int)
        assert pid_alive(pid)
        solo.process.send_signal(signal.SIGTERM)  # the gateway alone; it must stop its worker
        assert solo.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert not pid_alive(pid)


def streamed_text(body: str) -> str:
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_an_upstream_is_sent_sixteen_streams_at_once_by_default(tmp_path: Path) -> None:
    """The upstream (a double of a batching server: a vLLM pod, a cloud API) answers only once 16
    requests are open together, else 503: sent one at a time, as the old default of
    `max_concurrency: 1` did, every stream would wait behind the others and none would be answered."""
    streams = 16
    with cloud_director_double() as upstream:
        upstream.together = threading.Barrier(streams, timeout=30)
        with run_server(tmp_path, [{"id": "batched", "backend": "openai", "url": upstream.url}]) as gateway:
            body = {"model": "batched", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            url = f"{gateway.v1}/chat/completions"
            with ThreadPoolExecutor(streams) as pool:
                asked = [pool.submit(httpx.post, url, json=body, timeout=90) for _ in range(streams)]
                replies = [reply.result() for reply in asked]
            state = gateway.model_state("batched")
    assert [r.status_code for r in replies] == [200] * streams
    assert {streamed_text(r.text) for r in replies} == {f"{VERDICT} ."}
    assert (state["max_concurrency"], state["in_flight"], state["queued"]) == (64, 0, 0)
    assert len(upstream.received) == streams
