"""The council in process: the whole app with scripted backends (tests/scripted.py says what the
double stands in for), so fan-out, deadlines, failures, the Director's chain, consent and the
privacy filter, the ranking pass and the exact wire shapes are checked in milliseconds. The
same paths on real SmolLM2 workers and a real HTTP cloud double: tests/test_e2e_council.py."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import protocol as p
from konsilium.config import AgentSeat, CouncilConfig, RoleRoute, RoutingConfig, TargetRef, load_config
from konsilium.errors import BackendUnavailableError, ConfigError, RequestFailedError
from konsilium.manifest import Manifest
from konsilium.observability.logs import JsonFormatter
from model_store.types import Finish, TextDelta, Usage
from tests.openapi import assert_valid
from tests.scripted import ScriptedBackend, Step
from tests.test_inprocess import model, serving

AGENTS = {"dev": "a", "security": "b", "qa": "c"}
CONSENT = {"x-konsilium-cloud-consent": "1"}


def cloud_model() -> Manifest:
    return Manifest(id="cloud", format="remote", url="http://127.0.0.1:9/v1", cloud=True, context_length=8192)


def settings(**council: Any) -> dict[str, Any]:
    roles = {role: RoleRoute(targets=[TargetRef(model=m)]) for role, m in AGENTS.items()}
    roles["director"] = RoleRoute(targets=[TargetRef(model="cloud"), TargetRef(model="d")])
    return {
        "models": [model(m) for m in ("a", "b", "c", "d")] + [cloud_model()],
        "allow_external_api": True,
        "routing": RoutingConfig(roles=roles),
        "councils": {"default": CouncilConfig(**{"agents": list(AGENTS), **council})},
    }


def backends() -> dict[str, ScriptedBackend]:
    return {name: ScriptedBackend(name) for name in ("a", "b", "c", "d", "cloud")}


def ask(content: str = "Review my login handler.", **fields: Any) -> dict[str, Any]:
    return {"model": "konsilium", "messages": [{"role": "user", "content": content}], **fields}


def said(text: str, prompt: int = 3, completion: int = 2) -> list[Step]:
    return [TextDelta(text=text), Finish(reason="stop", usage=Usage(prompt, completion))]


def system_of(backend: ScriptedBackend, index: int = -1) -> str:
    return backend.requests[index].messages[0].content


def sse(body: str) -> list[Any]:
    frames = [line.removeprefix("data: ") for line in body.split("\n") if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    return [json.loads(f) for f in frames[:-1]]


async def test_agents_answer_at_once_and_the_director_weighs_them() -> None:
    gates = {name: asyncio.Event() for name in AGENTS.values()}
    models = backends()
    for name, gate in gates.items():
        models[name].replies = [[gate, *said(f"answer of {name}")]]
    models["d"].replies = [said("the verdict", prompt=10, completion=5)]
    async with serving(models, **settings()) as (client, _):
        reply = asyncio.ensure_future(client.post("/v1/chat/completions", json=ask()))
        for _ in range(2000):  # every agent holds its model's slot at the same time: a parallel fan-out
            if all(models[name].in_flight == 1 for name in gates):
                break
            await asyncio.sleep(0.001)
        assert [models[name].in_flight for name in gates] == [1, 1, 1]
        for gate in gates.values():
            gate.set()
        response = await reply
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    report = msgspec.convert(body["konsilium"], p.CouncilReport)
    assert [(a.role, a.status, a.model) for a in report.agents] == [
        ("dev", "ok", "a"), ("security", "ok", "b"), ("qa", "ok", "c")
    ]  # fmt: skip
    assert (report.director.model, report.director.fallbacks) == ("d", []), "no consent: the cloud is skipped"
    assert models["cloud"].requests == []
    message = body["choices"][0]["message"]
    assert message["content"] == "the verdict"
    assert message["reasoning_content"] == (
        "### dev · a\n\nanswer of a\n\n### security · b\n\nanswer of b\n\n### qa · c\n\nanswer of c\n\n"
    )
    assert body["usage"] == {"prompt_tokens": 19, "completion_tokens": 11, "total_tokens": 30}
    assert (body["model"], response.headers["x-konsilium-model"]) == ("konsilium", "d")
    assert response.headers["x-konsilium-agents"] == "dev=a,security=b,qa=c"
    verdict_prompt = system_of(models["d"])
    assert all(f'<answer agent="{role}">\nanswer of {m}\n</answer>' in verdict_prompt for role, m in AGENTS.items())
    assert system_of(models["a"]).startswith("You are the council's senior software developer.")
    assert models["a"].requests[0].max_tokens == 256
    assert not models["a"].requests[0].tools


async def test_a_failed_and_a_late_agent_are_reported_and_left_out_of_the_verdict() -> None:
    models = backends()
    models["a"].replies = [said("dev says")]
    models["b"].replies = [[RequestFailedError("the worker could not run it")]]
    models["c"].replies = [[asyncio.Event(), *said("never")]]  # a gate nobody opens
    models["d"].replies = [said("verdict")]
    seats = ["dev", "security", AgentSeat(role="qa", deadline_ms=50)]
    async with serving(models, **settings(agents=seats)) as (client, _):
        response = await client.post("/v1/chat/completions", json=ask())
    assert response.status_code == 200, response.text
    agents = {a["role"]: a for a in response.json()["konsilium"]["agents"]}
    assert (agents["dev"]["status"], agents["security"]["status"], agents["qa"]["status"]) == (
        "ok",
        "failed",
        "timeout",
    )
    assert agents["security"]["error"] == "backend_error: the worker could not run it"
    assert agents["qa"]["error"] == "backend_timeout: agent qa missed its deadline of 50 ms"
    assert "usage" not in agents["qa"]
    assert agents["dev"]["usage"]["total_tokens"] == 5
    assert response.headers["x-konsilium-agents"] == "dev=a,security=failed,qa=timeout"
    verdict_prompt = system_of(models["d"])
    assert '<answer agent="dev">' in verdict_prompt
    assert '<answer agent="security">' not in verdict_prompt
    assert '<answer agent="qa">' not in verdict_prompt
    reasoning = response.json()["choices"][0]["message"]["reasoning_content"]
    assert "*security: failed — backend_error: the worker could not run it*" in reasoning
    assert models["c"].in_flight == 0, "the late agent's call was cancelled, its slot freed"


async def test_every_agent_failing_is_one_error_naming_each() -> None:
    models = backends()
    for name in AGENTS.values():
        models[name].replies = [[BackendUnavailableError(f"{name} is down")]] * 2  # streamed and not
    async with serving(models, **settings()) as (client, _):
        response = await client.post("/v1/chat/completions", json=ask())
        streamed = await client.post("/v1/chat/completions", json=ask(stream=True))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "all_targets_failed"
    assert error["message"].startswith("every agent failed: dev: model_unavailable (")
    assert "security: model_unavailable" in error["message"]
    assert "qa: model_unavailable" in error["message"]
    assert models["d"].requests == [], "no verdict without answers"
    assert streamed.status_code == 503, "a council that cannot start is an HTTP error, not a broken stream"


async def test_a_stream_sends_reasoning_then_content_then_usage() -> None:
    models = backends()
    models["a"].replies = [said("dev ")]
    models["b"].replies = [said("sec ")]
    models["c"].replies = [said("qa ")]
    models["d"].replies = [[TextDelta(text="final "), TextDelta(text="word"), Finish("stop", Usage(7, 2))]]
    async with serving(models, **settings()) as (client, _):
        response = await client.post(
            "/v1/chat/completions", json=ask(stream=True, stream_options={"include_usage": True})
        )
    assert response.status_code == 200
    assert response.headers["x-konsilium-agents"] == "dev,security,qa"
    chunks = sse(response.text)
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    kinds = [_kind(c) for c in chunks]
    assert kinds[0] == "role"
    assert kinds[-2:] == ["finish", "usage"]
    body = kinds[1:-2]
    assert body == sorted(body, key=["reasoning", "content"].index), f"reasoning before content: {kinds}"
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"])
    assert reasoning.count("### ") == 3
    assert "dev " in reasoning
    assert "qa " in reasoning
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "final word"
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert [a["status"] for a in finish["konsilium"]["agents"]] == ["ok", "ok", "ok"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 16, "completion_tokens": 8, "total_tokens": 24}


def _kind(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    delta = choice["delta"]
    if choice.get("finish_reason"):
        return "finish"
    if "role" in delta:
        return "role"
    return "reasoning" if "reasoning_content" in delta else "content"


async def test_with_consent_the_cloud_director_gets_placeholders_and_the_user_the_originals(
    caplog: pytest.LogCaptureFixture, recording_tracer_provider: InMemorySpanExporter
) -> None:
    recording_tracer_provider.clear()
    models = backends()
    models["cloud"].replies = [
        [TextDelta(text="Write to <EMA"), TextDelta(text="IL_1> or call <PHONE"), TextDelta(text="_1>."),
         Finish("stop", Usage(50, 9))]
    ]  # fmt: skip
    prompt = "My email is ivan.petrov@example.ru and my phone +7 (912) 345-67-89. Review the login handler."
    async with serving(models, **settings()) as (client, _):
        with caplog.at_level(logging.INFO, logger="konsilium.access"):
            response = await client.post("/v1/chat/completions", json=ask(prompt), headers=CONSENT)
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["konsilium"]["director"]["model"] == "cloud"
    sent = json.dumps([m.content for m in models["cloud"].requests[0].messages], ensure_ascii=False)
    assert "ivan.petrov@example.ru" not in sent
    assert "345-67-89" not in sent
    assert "<EMAIL_1>" in sent
    assert "<PHONE_1>" in sent
    assert body["choices"][0]["message"]["content"] == "Write to ivan.petrov@example.ru or call +7 (912) 345-67-89."
    assert "ivan.petrov@example.ru" in system_of(models["a"]) + models["a"].requests[0].messages[1].content, (
        "local agents read the prompt as written"
    )
    [access] = [r for r in caplog.records if r.name == "konsilium.access"]
    line = json.loads(JsonFormatter().format(access))
    assert (line["role"], line["model"], line["redacted"]) == ("council", "cloud", {"email": 1, "phone": 1})
    assert "ivan.petrov" not in json.dumps(line), "counts, never the values"
    [span] = [s for s in recording_tracer_provider.get_finished_spans() if s.name == "chat cloud"]
    assert span.attributes is not None
    assert (
        span.attributes["konsilium.privacy.redacted.email"],
        span.attributes["konsilium.privacy.redacted.phone"],
    ) == (1, 1)
    assert 'konsilium_privacy_redactions_total{type="email"} 1.0' in metrics
    assert 'konsilium_privacy_redactions_total{type="phone"} 1.0' in metrics


async def test_the_director_falls_back_to_a_local_model_when_the_cloud_fails() -> None:
    models = backends()
    models["cloud"].replies = [[BackendUnavailableError("the cloud is down")]]
    models["d"].replies = [said("local verdict")]
    async with serving(models, **settings()) as (client, _):
        response = await client.post("/v1/chat/completions", json=ask(), headers=CONSENT)
    assert response.status_code == 200
    director = response.json()["konsilium"]["director"]
    assert (director["model"], director["fallbacks"], director["status"]) == ("d", ["cloud"], "ok")
    assert response.headers["x-konsilium-fallbacks"] == "cloud"
    assert len(models["cloud"].requests) == 1


async def test_agents_never_go_to_the_cloud_even_with_consent() -> None:
    models = backends()
    config = settings()
    config["routing"].roles["dev"] = RoleRoute(targets=[TargetRef(model="cloud"), TargetRef(model="a")])
    async with serving(models, **config) as (client, _):
        response = await client.post("/v1/chat/completions", json=ask(), headers=CONSENT)
    assert response.status_code == 200
    assert response.json()["konsilium"]["agents"][0]["model"] == "a"
    assert len(models["cloud"].requests) == 1, "only the Director's call"


async def test_the_ranking_pass_orders_the_answers_for_the_director() -> None:
    models = backends()
    ranking = '{"ranking": ["B", "A", "C"]}'
    for name in AGENTS.values():
        models[name].replies = [said(f"answer of {name}"), said(ranking)]
    models["d"].replies = [said("verdict")]
    async with serving(models, **settings(ranking="agents")) as (client, _):
        response = await client.post("/v1/chat/completions", json=ask())
    assert response.status_code == 200, response.text
    report = response.json()["konsilium"]
    assert report["ranking"] == ["security", "dev", "qa"]
    assert [r["role"] for r in report["rankers"]] == ["dev", "security", "qa"]
    ranker_prompt = system_of(models["a"], 1)
    assert "Answer A:\nanswer of a" in ranker_prompt
    assert "dev" not in ranker_prompt.split("Answer A:")[1]
    assert models["a"].requests[1].json_output is not None, "a ranking is JSON, constrained"
    assert "peer ranking, best first: security, dev, qa." in system_of(models["d"])
    assert response.json()["usage"]["total_tokens"] == 5 * 7


async def test_a_council_refuses_what_it_cannot_answer() -> None:
    async with serving(backends(), **settings()) as (client, _):
        unknown = await client.post("/v1/chat/completions", json={**ask(), "model": "konsilium/nope"})
        text = await client.post("/v1/completions", json={"model": "konsilium", "prompt": "hi"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["message"] == (
        "The model 'konsilium/nope' does not exist: no council 'nope' (konsilium)."
    )
    assert (text.status_code, text.json()["error"]["param"]) == (400, "model")


async def test_each_council_call_has_its_span_under_the_request(
    recording_tracer_provider: InMemorySpanExporter,
) -> None:
    recording_tracer_provider.clear()
    async with serving(backends(), **settings()) as (client, _):
        assert (await client.post("/v1/chat/completions", json=ask())).status_code == 200
        metrics = (await client.get("/metrics")).text
    spans = recording_tracer_provider.get_finished_spans()
    server = next(s for s in spans if s.name == "POST /v1/chat/completions")
    council = {s.name: s for s in spans if s.name.startswith("council.")}
    assert sorted(council) == [
        "council.agent dev",
        "council.agent qa",
        "council.agent security",
        "council.verdict director",
    ]
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id for s in council.values())
    chat = [s for s in spans if s.name.startswith("chat ")]
    parents = {s.parent.span_id for s in chat if s.parent is not None}
    assert parents == {s.context.span_id for s in council.values()}, "each dispatch nests in its council call"
    assert 'konsilium_council_requests_total{council="default"} 1.0' in metrics
    assert 'konsilium_council_calls_total{council="default",kind="agent",role="qa",status="ok"} 1.0' in metrics
    assert 'konsilium_council_verdict_seconds_count{council="default"} 1.0' in metrics


@pytest.mark.parametrize(
    ("council", "problem"),
    [
        ({"agents": ["dev", "dev"]}, "councils.review.agents: each role sits once, got ['dev', 'dev']"),
        ({"agents": []}, "councils.review.agents: a council needs at least one agent"),
        ({"agents": ["director"]}, "councils.review.agents[0]: Invalid enum value 'director'"),
        (
            {"agents": [{"role": "qa", "deadline": 5}]},
            "councils.review.agents[0]: Object contains unknown field `deadline`",
        ),
        ({"ranking": "all"}, "councils.review.ranking: Invalid enum value 'all'"),
    ],
)
def test_a_council_config_is_checked(council: dict[str, Any], problem: str, tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(json.dumps({"councils": {"review": council}}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}: {problem}"]


async def test_any_request_to_a_cloud_target_needs_consent_and_is_scrubbed() -> None:
    models = backends()
    models["cloud"].replies = [said("Mail <EMAIL_1>")]
    question = {"messages": [{"role": "user", "content": "Mail anna@example.org"}]}
    async with serving(models, **settings()) as (client, _):
        local = await client.post("/v1/chat/completions", json={"model": "role:director", **question})
        dev = {"x-konsilium-role": "dev"}  # the role named, so the chain it falls to is known
        asked = await client.post("/v1/chat/completions", json={"model": "cloud", **question}, headers=dev)
        cloud = await client.post("/v1/chat/completions", json={"model": "role:director", **question}, headers=CONSENT)
    assert (local.status_code, local.headers["x-konsilium-model"]) == (200, "d")
    assert (asked.status_code, asked.headers["x-konsilium-model"]) == (200, "a"), "named, skipped: the role's chain"
    assert (cloud.status_code, cloud.headers["x-konsilium-model"]) == (200, "cloud")
    assert cloud.json()["choices"][0]["message"]["content"] == "Mail anna@example.org"
    assert [m.content for m in models["cloud"].requests[0].messages] == ["Mail <EMAIL_1>"]
    assert len(models["cloud"].requests) == 1, "only the request with consent reached it"


async def test_councils_are_listed_as_models_for_an_ide_picker() -> None:
    config = settings()
    config["councils"]["review"] = CouncilConfig(agents=["qa"])
    async with serving(backends(), **config) as (client, _):
        listed = (await client.get("/v1/models")).json()
        review = await client.get("/v1/models/konsilium/review")
    assert_valid("ListModelsResponse", listed)
    assert [m["id"] for m in listed["data"]] == ["a", "b", "c", "d", "cloud", "konsilium", "konsilium/review"]
    assert (review.status_code, review.json()["id"], review.json()["owned_by"]) == (
        200,
        "konsilium/review",
        "konsilium",
    )


async def test_a_request_only_a_cloud_target_could_answer_needs_consent() -> None:
    config = settings()
    config["routing"].roles["director"] = RoleRoute(targets=[TargetRef(model="cloud")])
    models = backends()
    async with serving(models, **config) as (client, _):
        refused = await client.post("/v1/chat/completions", json={**ask(), "model": "role:director"})
        council = await client.post("/v1/chat/completions", json=ask(stream=True))
    assert (council.status_code, council.json()["error"]["code"]) == (403, "cloud_consent_required")
    assert all(not models[m].requests for m in AGENTS.values()), "no agent ran for a verdict that cannot come"
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("cloud_consent_required", "x-konsilium-cloud-consent")
    assert error["message"] == (
        "Only a cloud target can answer and the request has no consent (x-konsilium-cloud-consent: 1): "
        "cloud: cloud target; no consent (x-konsilium-cloud-consent)"
    )


def test_a_seat_whose_chain_is_only_cloud_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    config = {
        "models": [{"id": "c", "format": "remote", "url": "http://127.0.0.1:9/v1", "cloud": True}],
        "routing": {"roles": {"dev": {"targets": [{"model": "c"}]}}},
        "councils": {"default": {"agents": ["dev"]}},
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}: councils.default.agents: dev's chain (routing.roles.dev.targets) has only cloud targets, "
        "and council agents answer locally"
    ]


async def test_the_admin_route_explains_where_each_council_call_would_go() -> None:
    async with serving(backends(), **settings()) as (client, _):
        explained = (await client.post("/admin/route", json=ask())).json()
        consented = (await client.post("/admin/route", json=ask(), headers=CONSENT)).json()
    assert explained["council"] == "default"
    assert [(a["seat"], a["role"], a["target"]["model"]) for a in explained["agents"]] == [
        ("dev", "dev", "a"), ("security", "security", "b"), ("qa", "qa", "c")
    ]  # fmt: skip
    director = explained["director"]
    assert (director["role"], director["target"]["model"]) == ("director", "d")
    assert director["skipped"] == [{"target": "cloud", "why": "cloud target; no consent (x-konsilium-cloud-consent)"}]
    assert consented["director"]["target"]["model"] == "cloud"
