"""The council end to end: real SmolLM2 agents in two llama.cpp workers, the Director played by
`CloudDirectorDouble` (tests/cloud_double.py: a real HTTP server on loopback standing in for a
hosted model, recording all it receives), read through the official `openai` SDK.

The privacy canaries below are each a real-looking value of its type (valid check digits where
the type has them), in Russian and English; none may reach the cloud double, and the user must
see every one restored in the Director's answer, whose placeholders the double splits across
chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest

from gateway import protocol as p
from tests.cloud_double import VERDICT, CloudDirectorDouble, cloud_director_double
from tests.openapi import assert_valid
from tests.servers import Server, free_port, llama_model, run_server

pytestmark = pytest.mark.e2e

CONSENT = {"x-konsilium-cloud-consent": "1"}
ASK: dict[str, Any] = {"max_tokens": 24, "temperature": 0}
QUESTION = [{"role": "user", "content": "Is storing passwords with MD5 fine? Answer briefly."}]

CANARIES = {
    "email": "ivan.petrov@example.ru",
    "phone": "+7 (912) 345-67-89",
    "phone_international": "+44 20 7946 0958",
    "inn": "7707083893",
    "snils": "112-233-445 95",
    "ogrn": "1027700132195",
    "passport": "4510 123456",
    "card": "4111 1111 1111 1111",
    "iban": "DE89370400440532013000",
    "ip": "203.0.113.42",
    "openai_key": "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
    "aws_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "denylist": "Project Falcon",
}
PROMPT = (
    f"Меня зовут Иван, мой email {CANARIES['email']}, телефон {CANARIES['phone']}, ИНН {CANARIES['inn']}, "
    f"СНИЛС {CANARIES['snils']}, ОГРН {CANARIES['ogrn']}, паспорт {CANARIES['passport']}. "
    f"My card is {CANARIES['card']}, IBAN {CANARIES['iban']}, London office {CANARIES['phone_international']}, "
    f"server {CANARIES['ip']}, key {CANARIES['openai_key']}, AWS {CANARIES['aws_key']}, "
    f"token {CANARIES['github_token']}, session {CANARIES['jwt']}. It is for {CANARIES['denylist']}. "
    "Is it safe to paste these into a chat?"
)


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudDirectorDouble]:
    with cloud_director_double() as double:
        yield double


@pytest.fixture(scope="module")
def served(cloud: CloudDirectorDouble, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = [
        llama_model("smol-a", n_threads=1),  # two workers, one core each: two agents really run at once
        llama_model("smol-b", n_threads=1),
        {"id": "cloud-director", "backend": "openai", "url": cloud.url, "cloud": True, "upstream_model": "cloud",
         "context_length": 16384},
        {"id": "down", "backend": "openai", "url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 2},
    ]  # fmt: skip
    target = {"dev": "smol-a", "security": "smol-b", "qa": "smol-a", "ux": "down", "seo": "down"}
    roles: dict[str, Any] = {role: {"targets": [{"model": m}]} for role, m in target.items()}
    roles["director"] = {"targets": [{"model": "cloud-director"}, {"model": "smol-a"}]}
    councils = {
        "default": {"agents": ["dev", "security"], "agent_max_tokens": 24},
        "review": {"agents": ["dev", {"role": "qa", "deadline_ms": 1}, "ux"], "agent_max_tokens": 24},
        "broken": {"agents": ["ux", "seo"]},
        "long": {"agents": ["dev", "security", "qa"], "agent_max_tokens": 1000},
    }
    settings = {
        "allow_external_api": True,
        "routing": {"roles": roles, "breaker_failures": 100},
        "councils": councils,
        "privacy": {"denylist": ["Project Falcon"]},
    }
    with run_server(tmp_path_factory.mktemp("council"), models, **settings) as server:
        yield server


@pytest.fixture
def sdk(served: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=180) as client:
        yield client


def council_of(completion: Any) -> p.CouncilReport:
    """The `konsilium` object, as the SDK hands it over (an extra field), checked by our own type."""
    return msgspec.convert(completion.model_extra["konsilium"], p.CouncilReport)


def test_the_sdk_reads_a_council_answer_and_the_agents_ran_at_once(
    sdk: openai.OpenAI, cloud: CloudDirectorDouble
) -> None:
    before = len(cloud.received)
    raw = sdk.chat.completions.with_raw_response.create(model="konsilium", messages=QUESTION, **ASK)  # type: ignore[arg-type]
    completion = raw.parse()
    assert_valid("CreateChatCompletionResponse", raw.http_response.json())
    report = council_of(completion)
    dev, security = report.agents
    assert [(a.role, a.status, a.model) for a in report.agents] == [
        ("dev", "ok", "smol-a"),
        ("security", "ok", "smol-b"),
    ]
    assert dev.started_ms < security.started_ms + security.latency_ms
    assert security.started_ms < dev.started_ms + dev.latency_ms, "the two agents' calls overlap in time"
    assert (report.director.model, report.director.status) == ("smol-a", "ok"), "no consent: a local Director"
    assert len(cloud.received) == before, "without consent the cloud receives nothing at all"
    message = completion.choices[0].message
    assert message.content
    reasoning = (message.model_extra or {})["reasoning_content"]
    assert reasoning.startswith("### dev · smol-a\n\n")
    assert "### security · smol-b\n\n" in reasoning
    usage = completion.usage
    assert usage is not None
    calls = [*report.agents, report.director]
    assert usage.prompt_tokens == sum(c.usage.prompt_tokens for c in calls if c.usage)
    assert usage.completion_tokens == sum(c.usage.completion_tokens for c in calls if c.usage)
    assert raw.headers["x-konsilium-director"] == "smol-a"
    assert raw.headers["x-konsilium-agents"] == "dev=smol-a,security=smol-b"


def test_a_stream_reasons_then_answers_then_counts(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="konsilium",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        **ASK,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    phases = []
    for chunk in chunks:
        if not chunk.choices:
            phases.append("usage")
            continue
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            phases.append("reasoning")
        elif delta.content:
            phases.append("content")
        elif chunk.choices[0].finish_reason:
            phases.append("finish")
    order = list(dict.fromkeys(phases))
    assert order == ["reasoning", "content", "finish", "usage"], phases
    assert phases.count("finish") == 1
    assert phases[-1] == "usage"
    finish = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    report = council_of(finish)
    assert [a.status for a in report.agents] == ["ok", "ok"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == sum(
        c.usage.prompt_tokens + c.usage.completion_tokens for c in [*report.agents, report.director] if c.usage
    )


def test_nothing_private_reaches_the_cloud_and_the_user_sees_it_restored(
    sdk: openai.OpenAI, cloud: CloudDirectorDouble, served: Server
) -> None:
    before = len(cloud.received)
    completion = sdk.chat.completions.create(
        model="konsilium",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers=CONSENT,
        **ASK,  # type: ignore[arg-type]
    )
    report = council_of(completion)
    assert report.director.model == "cloud-director"
    sent = cloud.received[before:]
    assert len(sent) == 1
    leaked = {kind: value for kind, value in CANARIES.items() if value in sent[0].text}
    assert leaked == {}, "these reached the cloud"
    answer = completion.choices[0].message.content or ""
    assert answer.startswith(VERDICT)
    missing = {kind: value for kind, value in CANARIES.items() if value not in answer}
    assert missing == {}, f"not restored in {answer!r}"
    assert "<" not in answer.removeprefix(VERDICT).replace(" .", ""), "every placeholder came back restored"
    metrics = httpx.get(f"{served.base_url}/metrics", timeout=10).text
    assert 'konsilium_privacy_redactions_total{type="card"}' in metrics


def test_the_director_falls_back_to_a_local_model_when_the_cloud_fails(
    sdk: openai.OpenAI, cloud: CloudDirectorDouble
) -> None:
    cloud.fail = True
    try:
        completion = sdk.chat.completions.create(model="konsilium", messages=QUESTION, extra_headers=CONSENT, **ASK)  # type: ignore[arg-type]
    finally:
        cloud.fail = False
    director = council_of(completion).director
    assert (director.model, director.fallbacks, director.status) == ("smol-a", ["cloud-director"], "ok")
    assert completion.choices[0].message.content


def test_a_failed_and_a_late_agent_are_reported(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="konsilium/review", messages=QUESTION, **ASK)  # type: ignore[arg-type]
    agents = {a.role: a for a in council_of(completion).agents}
    assert (agents["dev"].status, agents["qa"].status, agents["ux"].status) == ("ok", "timeout", "failed")
    assert agents["qa"].error == "backend_timeout: agent qa missed its deadline of 1 ms"
    assert agents["ux"].error is not None
    assert agents["ux"].error.startswith("model_unavailable: upstream http://127.0.0.1:")
    assert completion.choices[0].message.content


def test_every_agent_failing_is_an_openai_error_naming_each(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="konsilium/broken", messages=QUESTION, **ASK)  # type: ignore[arg-type]
    assert caught.value.status_code == 503
    error: Any = caught.value.body  # the SDK hands over the body's `error` object
    assert (error["code"], error["type"]) == ("all_targets_failed", "server_error")
    assert error["message"].startswith("every agent failed: ux: model_unavailable (")
    assert "; seo: model_unavailable (" in error["message"]


async def test_a_client_that_leaves_mid_council_frees_every_slot(served: Server) -> None:
    essay = [{"role": "user", "content": "Write a long, detailed essay on password hashing, with examples."}]
    body = {"model": "konsilium/long", "messages": essay, "stream": True, "max_tokens": 1000}
    async with (
        httpx.AsyncClient(timeout=120) as http,
        http.stream("POST", f"{served.v1}/chat/completions", json=body) as stream,
    ):
        async for line in stream.aiter_lines():
            if "reasoning_content" in line:
                break  # an agent is writing; dev and qa decode together in two of smol-a's slots
        busy = [served.model_state(m) for m in ("smol-a", "smol-b")]
        assert [(m["in_flight"], m["queued"]) for m in busy] == [(2, 0), (1, 0)]
    for _ in range(100):  # the client is gone: every agent's call is cancelled, queued or generating
        states = [served.model_state(m) for m in ("smol-a", "smol-b")]
        if all(s["in_flight"] == 0 and s["queued"] == 0 for s in states):
            break
        await asyncio.sleep(0.1)
    assert [(s["in_flight"], s["queued"]) for s in states] == [(0, 0), (0, 0)]
