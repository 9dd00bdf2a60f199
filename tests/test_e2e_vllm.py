"""vLLM end to end: a managed vLLM server with LoRA adapters behind Konsilium.

Real parts only: vLLM 0.32 for CPUs in its own virtualenv (`make vllm-env`), a Hugging Face copy
of SmolLM2 and real peft adapters made from it, SmolLM2 in a llama.cpp worker as the fallback.
These tests never skip: without the vLLM environment they fail and say how to build it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from konsilium.tenancy.keys import make_key
from konsilium.tenancy.sqlite_store import SqliteKeyStore
from tests.openapi import assert_valid
from tests.servers import ROOT, Server, llama_model, pid_alive, run_server

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
ASSETS = ROOT / ".cache" / "vllm"
BASE = "smol-vllm"
ADAPTERS = ("lora-alpha", "lora-beta", "lora-gamma")


def vllm_model() -> dict[str, object]:
    adapters = [{"name": name, "path": str(ASSETS / "adapters" / name)} for name in (*ADAPTERS, "lora-rank16")]
    adapters += [{"name": "lora-missing", "path": str(ASSETS / "adapters" / "no-such-adapter")}]
    adapters[0]["roles"] = ["qa"]
    return {
        "id": BASE, "format": "hf", "path": str(ASSETS / "smollm2-135m-hf"), "python": str(VLLM_PYTHON),
        "n_ctx": 2048, "max_loras": 2, "max_lora_rank": 8, "load": "eager", "load_timeout_s": 300,
        "max_concurrency": 8,  # vLLM batches: concurrent first requests for an adapter really meet
        "stop_grace_s": 10, "vllm_args": ["--dtype", "bfloat16"], "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "adapters": adapters,
    }  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not VLLM_PYTHON.is_file() or not (ASSETS / ".built").is_file():
        pytest.fail("the vLLM environment is missing: run `make vllm-env` (make test does it first)")
    routing = {
        "local_timeout_ms": 5000,
        "breaker_failures": 100,
        "roles": {
            "dev": {"targets": [{"model": BASE}, {"model": "smol-llama"}]},
            "ux": {"targets": [{"model": BASE, "adapter": "lora-beta"}]},
            "director": {"targets": [{"model": "smol-llama"}]},
        },
    }
    councils = {"loras": {"agents": ["ux", "qa"], "agent_max_tokens": 12}}  # qa: lora-alpha, by its roles
    models = [vllm_model(), llama_model("smol-llama", n_ctx=2048)]
    tmp = tmp_path_factory.mktemp("vllm")
    with run_server(tmp, models, routing=routing, memory_budget_mb=8000, councils=councils) as server:
        yield server


def chat(server: Server, model: str, text: str = "Say hello", **options: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 12, "temperature": 0}
    return httpx.post(f"{server.v1}/chat/completions", json={**body, **options}, timeout=120)


def vllm_state(server: Server) -> dict[str, Any]:
    models = httpx.get(f"{server.base_url}/admin/models", timeout=10).json()["models"]
    state: dict[str, Any] = next(m for m in models if m["id"] == BASE)
    return state


def vllm_port(server: Server) -> str:
    """The managed vLLM server's own port: it is on its command line."""
    argv = psutil.Process(vllm_state(server)["pid"]).cmdline()
    return argv[argv.index("--port") + 1]


def vllm_loras(server: Server) -> set[str]:
    """What vLLM itself has resident, from its own `/v1/models`."""
    port = vllm_port(server)
    listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
    assert all(m["parent"] == BASE for m in listed if m["id"] != BASE)
    return {m["id"] for m in listed if m["id"] != BASE}


def text_of(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    content: str = reply.json()["choices"][0]["message"]["content"]
    return content


def test_the_base_and_each_adapter_answer_and_the_adapters_differ(served: Server) -> None:
    base = chat(served, BASE)
    assert_valid("CreateChatCompletionResponse", base.json())
    assert (base.headers["x-konsilium-model"], base.json()["model"]) == (BASE, BASE)
    answers = {name: text_of(chat(served, name)) for name in ADAPTERS[:2]}
    assert all(answer != text_of(base) for answer in answers.values()), answers
    assert answers["lora-alpha"] != answers["lora-beta"]
    listed = {m["id"]: m for m in httpx.get(f"{served.v1}/models").json()["data"]}
    assert_valid("ListModelsResponse", {"object": "list", "data": list(listed.values())})
    assert listed["lora-beta"]["parent"] == BASE
    assert "parent" not in listed[BASE]
    assert (listed["lora-alpha"]["state"], listed["lora-gamma"]["state"]) == ("ready", "unloaded")
    argv = psutil.Process(vllm_state(served)["pid"]).cmdline()
    assert argv[argv.index("--max-num-seqs") + 1] == "8"  # vLLM batches what the gateway sends at once


def test_an_adapter_streams_chunk_by_chunk(served: Server) -> None:
    body = {"model": "lora-beta", "messages": [{"role": "user", "content": "Count"}], "max_tokens": 6,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{served.v1}/chat/completions", json=body, timeout=120) as reply:
        frames = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert reply.headers["x-konsilium-model"] == "lora-beta"
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert {c["model"] for c in chunks} == {"lora-beta"}
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert sum(bool(c["choices"] and c["choices"][0]["delta"].get("content")) for c in chunks) >= 2


def test_more_adapters_than_max_loras_unloads_the_least_recently_used(served: Server) -> None:
    for name in ("lora-alpha", "lora-beta", "lora-alpha"):
        text_of(chat(served, name))
    assert vllm_loras(served) == {"lora-alpha", "lora-beta"}
    text_of(chat(served, "lora-gamma"))  # beta was used less recently than alpha
    assert vllm_loras(served) == {"lora-alpha", "lora-gamma"}
    assert set(vllm_state(served)["adapters"]) == {"lora-alpha", "lora-gamma"}


def load_calls(server: Server) -> int:
    """vLLM's own access log lines, relayed into Konsilium's log (JSON lines)."""
    assert server.log is not None
    lines = [json.loads(line) for line in server.log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return sum('"POST /v1/load_lora_adapter HTTP/1.1" 200' in line["message"] for line in lines)


async def test_concurrent_first_requests_for_one_adapter_load_it_once(served: Server) -> None:
    assert "lora-beta" not in vllm_loras(served)
    before = load_calls(served)
    async with httpx.AsyncClient(timeout=120) as http:
        body = {"model": "lora-beta", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        replies = await asyncio.gather(*(http.post(f"{served.v1}/chat/completions", json=body) for _ in range(4)))
    assert [r.status_code for r in replies] == [200] * 4
    assert load_calls(served) - before == 1
    assert "lora-beta" in vllm_loras(served)


@pytest.mark.parametrize(
    ("adapter", "status", "code", "says"),
    [
        ("lora-missing", 404, "adapter_not_found", "no adapter at"),
        ("lora-rank16", 400, "adapter_incompatible", "LoRA rank 16 is greater than max_lora_rank 8"),
    ],
)
def test_an_adapter_that_is_missing_or_does_not_fit_is_a_clear_client_error(
    served: Server, adapter: str, status: int, code: str, says: str
) -> None:
    reply = chat(served, adapter)
    assert reply.status_code == status, reply.text
    assert_valid("ErrorResponse", reply.json())
    error = reply.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, "model", "invalid_request_error")
    assert error["message"].startswith(f"LoRA adapter {adapter!r}")
    assert says in error["message"]
    assert text_of(chat(served, "lora-alpha")), "the server is unharmed"


def test_a_role_routes_to_its_adapter(served: Server) -> None:
    explained = httpx.post(
        f"{served.base_url}/admin/route",
        json={"model": "auto", "messages": [{"role": "user", "content": "покрой тестами модуль оплаты"}]},
        timeout=30,
    ).json()
    assert (explained["role"], explained["target"]) == ("qa", {"model": BASE, "adapter": "lora-alpha"})
    reply = chat(served, "auto", "покрой тестами модуль оплаты")
    assert (reply.headers["x-konsilium-role"], reply.headers["x-konsilium-model"]) == ("qa", "lora-alpha")


def test_a_council_of_adapters_answers_at_once_on_one_vllm_server(served: Server) -> None:
    reply = chat(served, "konsilium/loras", "Is MD5 fine for passwords?")
    assert reply.status_code == 200, reply.text
    report = reply.json()["konsilium"]
    agents = [(a["role"], a["status"], a["model"], a.get("adapter")) for a in report["agents"]]
    assert agents == [("ux", "ok", BASE, "lora-beta"), ("qa", "ok", BASE, "lora-alpha")]
    ux, qa = report["agents"]
    assert ux["started_ms"] < qa["started_ms"] + qa["latency_ms"]
    assert qa["started_ms"] < ux["started_ms"] + ux["latency_ms"], "vLLM served both adapters' calls at once"
    assert report["director"]["model"] == "smol-llama"
    assert reply.headers["x-konsilium-agents"] == "ux=lora-beta,qa=lora-alpha"


def test_a_tenants_key_lists_routes_to_and_calls_only_its_own_adapters(served: Server, tmp_path: Path) -> None:
    """A second Konsilium with keys, in front of the same vLLM server as a remote backend: each
    adapter belongs to one tenant (lora-gamma to none: shared), and both tenants' adapters serve qa."""
    path = ASSETS / "adapters"
    adapters = [
        {"name": "lora-alpha", "path": str(path / "lora-alpha"), "tenants": ["acme"], "roles": ["qa"]},
        {"name": "lora-beta", "path": str(path / "lora-beta"), "tenants": ["globex"], "roles": ["qa"]},
        {"name": "lora-gamma", "path": str(path / "lora-gamma")},
    ]
    remote = {"id": BASE, "backend": "vllm", "url": f"http://127.0.0.1:{vllm_port(served)}", "max_loras": 2,
              "max_lora_rank": 8, "max_concurrency": 8, "adapters": adapters}  # fmt: skip
    store, secrets = SqliteKeyStore(tmp_path / "data" / "keys.sqlite", create=True), {}
    for tenant in ("acme", "globex"):
        key, secrets[tenant] = make_key(f"{tenant}-app", tenant=tenant)
        store.add(key)
    store.close()
    councils = {"qa": {"agents": ["qa"], "agent_max_tokens": 8, "director_max_tokens": 8}}
    with run_server(tmp_path, [remote], data_dir=str(tmp_path / "data"), councils=councils) as gateway:

        def ask(tenant: str, model: str, path: str = "/chat/completions", **headers: str) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}
            headers["authorization"] = f"Bearer {secrets[tenant]}"
            if path != "/chat/completions":
                return httpx.get(f"{gateway.v1}{path}", headers=headers, timeout=30)
            return httpx.post(f"{gateway.v1}{path}", json=body, headers=headers, timeout=120)

        listed = {t: [m["id"] for m in ask(t, "", "/models").json()["data"] if not m["id"].startswith("konsilium")]
                  for t in secrets}  # fmt: skip
        assert listed == {"acme": [BASE, "lora-alpha", "lora-gamma"], "globex": [BASE, "lora-beta", "lora-gamma"]}
        assert (ask("acme", "lora-alpha").headers["x-konsilium-model"], ask("acme", "lora-gamma").status_code) == (
            "lora-alpha",
            200,
        )
        hidden, unknown = ask("acme", "lora-beta"), ask("acme", "lora-zeta")
        assert (hidden.status_code, unknown.status_code) == (404, 404)
        assert hidden.json()["error"] == {**unknown.json()["error"], "message": "The model 'lora-beta' does not exist."}
        assert ask("acme", "", "/models/lora-beta").status_code == 404
        for tenant, own in (("acme", "lora-alpha"), ("globex", "lora-beta")):  # routing picks only its own
            routed = ask(tenant, "auto", **{"x-konsilium-role": "qa"})
            assert (routed.status_code, routed.headers["x-konsilium-model"]) == (200, own)
            seat = ask(tenant, "konsilium/qa").json()["konsilium"]["agents"][0]
            assert (seat["status"], seat["adapter"]) == ("ok", own)


def test_vllm_killed_requests_fall_back_and_the_next_request_restarts_it(served: Server) -> None:
    old_pid = vllm_state(served)["pid"]
    os.killpg(old_pid, signal.SIGKILL)  # the server and its engine process
    deadline = time.monotonic() + 30
    while vllm_state(served)["state"] != "unloaded" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vllm_state(served)["detail"] == "vLLM exited; it starts again on the next request"
    reply = chat(served, "auto", "hello there")
    assert reply.status_code == 200, reply.text
    assert (reply.headers["x-konsilium-model"], reply.headers["x-konsilium-fallbacks"]) == ("smol-llama", BASE)
    assert httpx.get(f"{served.base_url}/health").status_code == 200
    deadline = time.monotonic() + 240  # the request above started vLLM again, in the background
    while vllm_state(served)["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(1)
    state = vllm_state(served)
    assert state["state"] == "ready", state
    assert state["pid"] not in (None, old_pid)
    again = chat(served, "auto", "hello there")
    assert (again.status_code, again.headers["x-konsilium-model"]) == (200, BASE)


def test_shutdown_leaves_no_vllm_process(served: Server) -> None:
    pid = vllm_state(served)["pid"]
    tree = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    assert len(tree) >= 2, "vLLM runs its engine in a child process"
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=60)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in tree if pid_alive(p)] == []
