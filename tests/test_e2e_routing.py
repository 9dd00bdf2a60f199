"""Routing end to end: roles to their own models, fallbacks, timeouts, breakers, latency budgets.

Real parts: Konsilium processes, SmolLM2 in llama.cpp workers, a second Konsilium as a remote
primary (killed during the test). One test double: a server that accepts and never answers,
standing in for a hung model server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.openapi import assert_valid
from tests.servers import Server, free_port, llama_model, never_answering_server, run_server

pytestmark = pytest.mark.e2e


def smol(model_id: str, **options: object) -> dict[str, object]:
    return llama_model(model_id, n_ctx=512, **options)


def remote(model_id: str, url: str) -> dict[str, object]:
    return {"id": model_id, "format": "remote", "url": url, "upstream_model": "upstream", "connect_timeout_s": 2}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("upstream"), [smol("upstream")]) as server:
        yield server


@pytest.fixture(scope="module")
def routed(upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with never_answering_server() as hung_port:
        models = [
            smol("general", role="lightweight", load="eager"),
            smol("sec", load="on_demand"),
            smol("cold-big", load="on_demand"),
            smol("slow-load", load="on_demand", load_timeout_s=0.05),  # its load always times out
            remote("stuck", f"http://127.0.0.1:{hung_port}/v1"),
            remote("remote-primary", upstream.v1),
            remote("dead-1", f"http://127.0.0.1:{free_port()}/v1"),
            remote("dead-2", f"http://127.0.0.1:{free_port()}/v1"),
        ]
        routing = {
            "local_timeout_ms": 3000,
            "breaker_failures": 2,
            "breaker_cooldown_s": 600,
            "roles": {
                "security": {"targets": [{"model": "sec"}, {"model": "general"}]},
                "qa": {"targets": [{"model": "stuck"}, {"model": "general"}]},
                "architect": {"targets": [{"model": "remote-primary"}, {"model": "general"}]},
                "director": {"targets": [{"model": "dead-1"}, {"model": "dead-2"}]},
                "ux": {"targets": [{"model": "cold-big"}, {"model": "general"}]},
                "seo": {"targets": [{"model": "slow-load"}, {"model": "general"}]},
                "dev": {"targets": [{"model": "general"}]},
            },
        }
        tmp = tmp_path_factory.mktemp("routed")
        with run_server(tmp, models, routing=routing, memory_budget_mb=4000) as server:
            yield server


def ask(server: Server, text: str, model: str = "auto", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=headers, timeout=120)


def test_a_role_goes_to_its_own_model(routed: Server) -> None:
    reply = ask(routed, "проверь уязвимости в этом коде")
    assert reply.status_code == 200, reply.text
    assert_valid("CreateChatCompletionResponse", reply.json())
    assert reply.json()["model"] == "sec"
    assert reply.headers["x-konsilium-model"] == "sec"
    assert reply.headers["x-konsilium-role"] == "security"
    assert reply.headers["x-konsilium-route"] == "classifier:" + quote("провер уязвим")
    assert reply.headers["x-konsilium-matched"] == f"{quote('провер уязвим')},{quote('уязвим')}"
    assert reply.headers["x-konsilium-fallbacks"] == ""
    assert reply.headers["x-konsilium-role-source"] == "classifier"
    assert 0.5 < float(reply.headers["x-konsilium-role-margin"]) <= 1


@pytest.mark.parametrize(
    ("model", "headers"), [("auto", {"x-konsilium-role": "security"}), ("security", {}), ("role:security", {})]
)
def test_explicit_roles(routed: Server, model: str, headers: dict[str, str]) -> None:
    reply = ask(routed, "hello there", model=model, **headers)
    assert (reply.headers["x-konsilium-model"], reply.headers["x-konsilium-role"]) == ("sec", "security")


def test_the_remote_primary_answers_then_dies_and_the_fallback_answers(routed: Server, upstream: Server) -> None:
    prompt = "спроектируй архитектуру сервиса уведомлений"
    first = ask(routed, prompt)
    assert (first.status_code, first.headers["x-konsilium-model"]) == (200, "remote-primary")
    upstream.process.kill()
    upstream.process.wait(timeout=10)
    second = ask(routed, prompt)
    assert second.status_code == 200, second.text
    assert second.headers["x-konsilium-model"] == "general"
    assert second.json()["model"] == "general"
    assert second.headers["x-konsilium-fallbacks"] == "remote-primary"
    assert second.headers["x-konsilium-route"].endswith(";fallback")


def test_a_model_that_never_answers_is_left_after_local_timeout(routed: Server) -> None:
    reply = ask(routed, "покрой тестами модуль оплаты")
    assert reply.status_code == 200, reply.text
    assert (reply.headers["x-konsilium-role"], reply.headers["x-konsilium-model"]) == ("qa", "general")
    assert reply.headers["x-konsilium-fallbacks"] == "stuck"


def test_a_load_that_fails_mid_stream_request_falls_back_before_the_first_byte(routed: Server) -> None:
    body = {"model": "auto", "stream": True, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "улучши SEO этой страницы"}]}  # fmt: skip
    with httpx.stream("POST", f"{routed.v1}/chat/completions", json=body, timeout=120) as reply:
        raw = reply.read().decode()
    assert reply.status_code == 200, raw
    assert (reply.headers["x-konsilium-role"], reply.headers["x-konsilium-model"]) == ("seo", "general")
    assert reply.headers["x-konsilium-fallbacks"] == "slow-load"
    assert not raw.startswith(":"), "no loading heartbeat committed the request to the failing model"
    frames = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    assert {f["model"] for f in frames} == {"general"}
    assert raw.endswith("data: [DONE]\n\n")


def test_every_target_down_is_one_503_listing_the_attempts(routed: Server) -> None:
    reply = ask(routed, "подведи итог обсуждения")
    assert reply.status_code == 503
    assert int(reply.headers["retry-after"]) >= 1
    assert_valid("ErrorResponse", reply.json())
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "all_targets_failed")
    assert error["message"].startswith("every target failed: dead-1: model_unavailable (")
    assert "; dead-2: model_unavailable (" in error["message"]


def test_breakers_open_after_repeated_failures(routed: Server) -> None:
    ask(routed, "подведи итог обсуждения")  # the second failure in a row for both
    explained = explain(routed, "подведи итог обсуждения")
    assert explained["target"] == {"model": None, "adapter": None}
    assert explained["skipped"] == [
        {"target": "dead-1", "why": "circuit breaker open"},
        {"target": "dead-2", "why": "circuit breaker open"},
    ]
    reply = ask(routed, "подведи итог обсуждения")
    assert (reply.status_code, reply.json()["error"]["code"]) == (503, "all_targets_failed")
    assert "circuit breaker open" in reply.json()["error"]["message"]
    states = {m["id"]: m for m in httpx.get(f"{routed.base_url}/admin/models").json()["models"]}
    assert (states["dead-1"]["breaker"], states["dead-2"]["breaker"], states["general"]["breaker"]) == (
        "open", "open", "closed",
    )  # fmt: skip
    assert states["general"]["ttft_ms"] > 0, "answered requests teach the router a time to first token"


def test_a_latency_budget_only_the_resident_model_meets(routed: Server) -> None:
    prompt = "улучши интерфейс этой формы"
    fast = ask(routed, prompt, **{"x-konsilium-latency-budget-ms": "1500"})  # cold-big: 2 s to load
    assert (fast.headers["x-konsilium-role"], fast.headers["x-konsilium-model"]) == ("ux", "general")
    assert fast.headers["x-konsilium-route"] == "latency:1500ms"
    patient = ask(routed, prompt)
    assert patient.headers["x-konsilium-model"] == "cold-big"


def explain(server: Server, text: str, model: str = "auto") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    reply = httpx.post(f"{server.base_url}/admin/route", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def test_explain_without_generating(routed: Server) -> None:
    explained = explain(routed, "проверь уязвимости в этом коде")
    assert 0.5 < explained.pop("margin") <= 1  # the classifier's probability lead
    assert explained == {
        "role": "security",
        "source": "classifier",
        "language": "ru",
        "matched": ["провер уязвим", "уязвим"],
        "target": {"model": "sec", "adapter": None},
        "fallbacks": ["general"],
        "skipped": [],
        "reason": "classifier:провер уязвим",
    }
    by_classifier = explain(routed, "the page jumps around while it loads and people tap the wrong thing")
    assert (by_classifier["source"], by_classifier["matched"]) == ("classifier", [])
    assert 0 < by_classifier["margin"] <= 1


def test_the_context_check_counts_with_the_resident_models_tokenizer(routed: Server) -> None:
    """`general` (n_ctx 512) is resident, so the gateway counts with its tokenizer and template.
    The role is named (`dev`): a page of `hello` means nothing to the classifier either way."""
    too_long = explain(routed, "hello " * 600, model="dev")
    assert (too_long["role"], too_long["target"]["model"]) == ("dev", None)
    [skipped] = too_long["skipped"]
    assert skipped["target"] == "general"
    counted = int(skipped["why"].removeprefix("context 512 < ").removesuffix(" tokens of prompt"))
    assert 600 < counted < 700, "an exact count: 600 words plus the chat template, not the ~1200 estimate"
    reply = ask(routed, "hello " * 600, model="dev")
    assert reply.status_code == 400, "no model can hold it: the client's to shorten, not to retry"
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert error["message"].startswith("The prompt is too long for every model that could answer: general: context 512")
    fits = explain(routed, "hello " * 150, model="dev")  # the 3-characters-a-token estimate: 301 tokens
    assert (fits["target"]["model"], fits["skipped"]) == ("general", [])


def test_route_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.servers import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "route", "ntcns lkz vjlekz jgkfns"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    decision = json.loads(result.stdout)
    assert (decision["role"], decision["matched"], decision["target"]["model"]) == (
        "qa", ["тест"], "smollm2-135m-instruct",
    )  # fmt: skip


@pytest.mark.parametrize(
    "text", ["ntcns lkz vjlekz jgkfns", "проверь SQL injection в форме логина", "hello " * 900, "Say hello."]
)
def test_the_route_command_and_the_admin_api_decide_alike(tmp_path: Path, text: str) -> None:
    """Both are the dispatcher's `explain` over the store's views: with the same config and the
    same loaded state (nothing loaded), the same prompt gets the same decision — a long prompt's
    context check included."""
    import subprocess
    import sys

    from tests.servers import ROOT

    models = [llama_model("general", load="on_demand", n_ctx=512), llama_model("other", load="on_demand")]
    with run_server(tmp_path, models) as server:
        config = Path(str(server.log).removesuffix(".log") + ".yaml")
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        served = httpx.post(f"{server.base_url}/admin/route", json=body, timeout=30)
        printed = subprocess.run(
            [sys.executable, "-m", "entrypoints.cli", "route", text, "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    assert served.status_code == 200, served.text
    assert served.json() == json.loads(printed.stdout)
