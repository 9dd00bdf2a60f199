"""API keys: the secret, the two stores (SQLite, and a real redis-server), the CLI, and the
gateway's front door (401, 403, isolation by model, limits decided in this process), in-process
on scripted models.

The shared limits (Redis, two replicas) are in test_e2e_tenancy.py; tenants' LoRA adapters on a
real vLLM in test_e2e_vllm.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from entrypoints.cli import main
from gateway.auth import BAD_KEY, NO_KEY, duration, presented
from gateway.services import Services
from konsilium.config import TenancyConfig
from konsilium.errors import BackendError, ConfigError
from konsilium.observability.logs import JsonFormatter
from konsilium.tenancy.keys import SECRET, ApiKey, KeyStore, KeyStoreError, Usage, digest_of, make_key
from konsilium.tenancy.limiter import Limiter
from konsilium.tenancy.redis_store import RedisKeyStore, sync_client
from konsilium.tenancy.service import env_admin_key
from konsilium.tenancy.sqlite_store import SqliteKeyStore
from model_store.types import TextDelta
from routing.requests import Access
from tests.redis_server import run_redis
from tests.scripted import ScriptedBackend
from tests.test_inprocess import Clock, ask, serving


def store_in(directory: Path) -> SqliteKeyStore:
    return SqliteKeyStore(directory / "keys.sqlite", create=True)


def add(directory: Path, name: str, **fields: Any) -> tuple[ApiKey, str]:
    key, secret = make_key(name, **fields)
    store = store_in(directory)
    store.add(key)
    store.close()
    return key, secret


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    backends = {"a": ScriptedBackend("a"), "b": ScriptedBackend("b")}
    async with serving(backends, data_dir=str(tmp_path), **settings) as (client, services):
        yield client, services


def error(code: str, message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- the secret and the store ------------------------------------------------------------------


def test_a_secret_is_recognisable_random_and_only_its_digest_is_kept(tmp_path: Path) -> None:
    key, secret = make_key("ci", rpm=5)
    assert SECRET.fullmatch(secret)
    assert len(secret) == 47
    assert key.digest == digest_of(secret)
    assert secret not in msgspec.json.encode(key).decode()
    assert key.shown == secret[:10]
    assert make_key("ci")[1] != secret
    store = store_in(tmp_path)
    store.add(key)
    raw = (tmp_path / "keys.sqlite").read_bytes()
    assert secret.encode() not in raw
    assert secret[10:].encode() not in raw


def test_the_sqlite_store_versions_every_change_and_refuses_a_taken_name(tmp_path: Path) -> None:
    missing = SqliteKeyStore(tmp_path / "nowhere" / "keys.sqlite")
    assert (missing.version(), missing.list_keys(), missing.usage()) == (0, [], {})
    assert not (tmp_path / "nowhere").exists()  # the gateway never creates it
    store = store_in(tmp_path)
    key, _ = make_key("team")
    store.add(key)
    assert (store.version(), [k.name for k in store.list_keys()]) == (1, ["team"])
    with pytest.raises(KeyStoreError, match="a key named 'team' exists"):
        store.add(make_key("team")[0])
    store.replace(msgspec.structs.replace(key, rpm=7))
    assert (store.version(), store.list_keys()[0].rpm) == (2, 7)
    store.add_usage({key.id: Usage(requests=2, prompt_tokens=10, completion_tokens=5, last_used=100.0)})
    store.add_usage({key.id: Usage(requests=1, errors=1, last_used=50.0)})
    assert store.usage() == {
        key.id: Usage(requests=3, prompt_tokens=10, completion_tokens=5, errors=1, last_used=100.0)
    }
    assert store.version() == 2  # usage is not a key change


def test_the_cli_creates_lists_updates_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "konsilium.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    argv = ["--config", str(config)]
    assert (
        main(["keys", "create", "--name", "acme-ci", "--tenant", "acme", "--rpm", "10", "--models", "a,b", *argv]) == 0
    )
    secret = capsys.readouterr().out.strip()
    assert SECRET.fullmatch(secret)
    assert main(["keys", "create", "--name", "acme-ci", *argv]) == 1
    assert "a key named 'acme-ci' exists" in capsys.readouterr().err
    assert main(["keys", "update", "acme-ci", "--rpm", "none", "--tpm", "500", "--admin", *argv]) == 0
    [key] = SqliteKeyStore(tmp_path / "data" / "keys.sqlite").list_keys()
    assert (key.tenant, key.models, key.rpm, key.tpm, key.admin) == ("acme", ("a", "b"), None, 500, True)
    assert main(["keys", "revoke", key.id, *argv]) == 0
    assert main(["keys", "list", *argv]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^acme-ci\s+" + key.id + r"\s+ksk-\S+…\s+acme\s+a,b\s+-\s+500\s+-\s+yes", listing, re.M)
    assert secret not in listing
    assert secret[10:] not in listing
    assert SqliteKeyStore(tmp_path / "data" / "keys.sqlite").list_keys()[0].revoked is not None
    assert main(["keys", "update", "nobody", "--rpm", "1", *argv]) == 1


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ([(b"authorization", b"Bearer ksk-x")], "ksk-x"),
        ([(b"authorization", b"bearer  ksk-x ")], "ksk-x"),
        ([(b"x-api-key", b"ksk-y")], "ksk-y"),  # Anthropic's clients
        ([(b"authorization", b"Basic dTpw")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([], None),
    ],
)
def test_the_key_is_read_from_either_header(headers: list[tuple[bytes, bytes]], found: str | None) -> None:
    assert presented(headers) == found


def test_access_to_models_and_to_a_tenants_adapters() -> None:
    anyone = Access(key="k")
    acme = Access(key="k", tenant="acme")
    only_base = Access(key="k", tenant="acme", models=frozenset({"base"}))
    assert anyone.permits("base", "base", ())
    assert anyone.permits("shared", "base", ())
    assert not anyone.permits("acme-lora", "base", ("acme",))
    assert acme.permits("acme-lora", "base", ("acme",))
    assert not acme.permits("globex-lora", "base", ("globex",))
    assert only_base.permits("acme-lora", "base", ("acme",))
    assert not only_base.permits("other", "other", ())
    assert not Access(key="k", tenant="globex", models=frozenset({"acme-lora"})).permits("acme-lora", "b", ("acme",))


@pytest.mark.parametrize(
    ("ms", "text"), [(0, "0ms"), (20, "20ms"), (1000, "1s"), (1500, "1.5s"), (59_999, "59.999s"), (360_000, "6m0s")]
)
def test_reset_times_are_written_as_openai_writes_them(ms: int, text: str) -> None:
    assert duration(ms) == text


# ---- the front door -------------------------------------------------------------------------------


async def test_without_keys_nothing_is_asked(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (client, _):
        reply = await client.post("/v1/chat/completions", json=ask())
        assert reply.status_code == 200
        assert not [h for h in reply.headers if h.startswith("x-ratelimit")]


async def test_a_missing_wrong_or_revoked_key_is_a_401(tmp_path: Path) -> None:
    key, secret = add(tmp_path, "dev")
    async with gateway(tmp_path) as (client, services):
        missing = await client.post("/v1/chat/completions", json=ask())
        assert (missing.status_code, missing.json()) == (401, error("invalid_api_key", NO_KEY))
        wrong = await client.get("/v1/models", headers=bearer(secret[:-1] + ("A" if secret[-1] != "A" else "B")))
        assert (wrong.status_code, wrong.json()) == (401, error("invalid_api_key", BAD_KEY))
        assert (await client.post("/v1/chat/completions", json=ask(), headers=bearer(secret))).status_code == 200
        assert (await client.get("/v1/models", headers={"x-api-key": secret})).status_code == 200
        assert (await client.get("/health")).status_code == 200  # probes and scrapes need no key
        assert (await client.get("/ready")).status_code == 200
        store = services.tenancy.ring.store if services.tenancy else None
        assert store is not None
        store.replace(msgspec.structs.replace(key, revoked=time.time()))
        await services.tenancy.ring.refresh() if services.tenancy else None
        revoked = await client.get("/v1/models", headers=bearer(secret))
        assert (revoked.status_code, revoked.json()) == (401, error("invalid_api_key", BAD_KEY))


async def test_a_key_sees_and_reaches_only_its_models(tmp_path: Path) -> None:
    _, secret = add(tmp_path, "only-a", models=["a"])
    async with gateway(tmp_path) as (client, _):
        listed = (await client.get("/v1/models", headers=bearer(secret))).json()["data"]
        assert [m["id"] for m in listed if m["owned_by"] != "konsilium"] == ["a"]
        hidden = await client.post("/v1/chat/completions", json=ask("b"), headers=bearer(secret))
        unknown = await client.post("/v1/chat/completions", json=ask("zzz"), headers=bearer(secret))
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json() == error("model_not_found", "The model 'b' does not exist.", "model")
        assert (await client.get("/v1/models/b", headers=bearer(secret))).status_code == 404
        routed = await client.post("/v1/chat/completions", json=ask("auto"), headers=bearer(secret))
        assert (routed.status_code, routed.headers["x-konsilium-model"]) == (200, "a")


async def test_the_admin_api_wants_an_admin_key_and_lists_usage_without_secrets(tmp_path: Path) -> None:
    user, user_secret = add(tmp_path, "user")
    _, admin_secret = add(tmp_path, "ops", admin=True)
    async with gateway(tmp_path) as (client, _):
        refused = await client.get("/admin/models", headers=bearer(user_secret))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        assert (await client.get("/admin/models")).status_code == 401
        for _ in range(2):
            await client.post("/v1/chat/completions", json=ask(), headers=bearer(user_secret))
        reply = await client.get("/admin/keys", headers=bearer(admin_secret))
        assert reply.status_code == 200
        assert user_secret not in reply.text
        assert user.digest not in reply.text
        keys = {k["name"]: k for k in reply.json()["keys"]}
        assert (keys["user"]["usage"]["requests"], keys["user"]["usage"]["prompt_tokens"]) == (2, 6)
        assert (keys["ops"]["admin"], keys["user"]["shown"]) == (True, user_secret[:10] + "…")


async def test_limits_without_redis_are_decided_here_with_openais_headers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = add(tmp_path, "tight", rpm=2, tpm=100)
    _, admin = add(tmp_path, "ops", admin=True)
    caplog.set_level(logging.INFO, logger="konsilium.access")
    async with gateway(tmp_path) as (client, _):
        first = await client.post("/v1/chat/completions", json=ask(max_tokens=10), headers=bearer(secret))
        assert first.status_code == 200
        assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == (
            "2",
            "1",
        )
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        reserved = 100 - int(first.headers["x-ratelimit-remaining-tokens"])
        assert reserved > 10  # the prompt's estimate plus max_tokens
        second = await client.post("/v1/chat/completions", json=ask(max_tokens=10), headers=bearer(secret))
        # the first answer used 4 tokens (3 prompt, 1 completion): the rest of its reservation came back
        assert int(second.headers["x-ratelimit-remaining-tokens"]) == 100 - 4 - reserved
        third = await client.post("/v1/chat/completions", json=ask(max_tokens=10), headers=bearer(secret))
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert "requests per minute (RPM)" in third.json()["error"]["message"]
        retry_ms = int(third.headers["retry-after-ms"])
        assert 59_000 < retry_ms <= 60_000
        assert third.headers["retry-after"] == str(-(-retry_ms // 1000))
        assert third.headers["x-ratelimit-remaining-requests"] == "0"
        assert (await client.get("/metrics", headers=bearer(secret))).status_code == 403  # names every key
        metrics = (await client.get("/metrics", headers=bearer(admin))).text
        assert 'konsilium_rate_limited_total{key="tight",limit="requests"} 1.0' in metrics
        assert 'konsilium_key_requests_total{key="tight",status="200",tenant=""} 2.0' in metrics
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "konsilium.access"]
    assert [(line["key"], line["tenant"], line["status"]) for line in lines if "key" in line][-1] == (
        "tight",
        None,
        429,
    )
    assert all(secret not in json.dumps(line) for line in lines)


async def test_a_request_larger_than_the_token_limit_is_refused_without_a_retry_time(tmp_path: Path) -> None:
    _, secret = add(tmp_path, "small", tpm=50)
    async with gateway(tmp_path) as (client, _):
        reply = await client.post("/v1/chat/completions", json=ask(max_tokens=200), headers=bearer(secret))
        assert reply.status_code == 429
        assert "retry-after" not in reply.headers
        assert reply.json()["error"]["message"].startswith("Request too large for key 'small'")


async def test_keys_unreadable_at_start_refuse_cleanly_until_read(tmp_path: Path) -> None:
    settings = {"redis_url": "redis://127.0.0.1:9/0", "tenancy": TenancyConfig(redis_timeout_ms=50)}
    async with gateway(tmp_path, **settings) as (client, _):
        reply = await client.get("/v1/models")
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.json() == error("key_store_unavailable", "The API keys cannot be read yet.", kind="server_error")
        assert (await client.get("/health")).status_code == 200


async def test_with_keys_required_an_empty_store_lets_nobody_in(tmp_path: Path) -> None:
    """What a replica does that starts against an emptied Redis (require_keys is on with redis_url)."""
    async with gateway(tmp_path, tenancy=TenancyConfig(require_keys=True)) as (client, _):
        reply = await client.post("/v1/chat/completions", json=ask())
        assert (reply.status_code, reply.json()) == (401, error("invalid_api_key", NO_KEY))


async def test_an_answer_cut_short_is_charged_its_whole_reservation(tmp_path: Path) -> None:
    _, secret = add(tmp_path, "leaver", tpm=1000)
    broken = ScriptedBackend("a", replies=[[TextDelta(text="hel"), BackendError("the worker died")]])
    async with serving({"a": broken}, data_dir=str(tmp_path)) as (client, _):
        body = ask(max_tokens=50, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer(secret)) as cut:
            frames = [line async for line in cut.aiter_lines() if line.startswith("data: ")]
        assert '"error"' in frames[-2]
        assert frames[-1] == "data: [DONE]"
        reserved = 1000 - int(cut.headers["x-ratelimit-remaining-tokens"])
        after = await client.post("/v1/chat/completions", json=ask(max_tokens=50), headers=bearer(secret))
        # no usage came back for the first: all it reserved stays charged (not 0: leaving early is not free)
        assert int(after.headers["x-ratelimit-remaining-tokens"]) == 1000 - reserved - reserved


async def test_a_key_without_max_tokens_is_held_to_its_reservation(tmp_path: Path) -> None:
    _, secret = add(tmp_path, "capped", tpm=100_000)
    backend = ScriptedBackend("a")
    async with serving({"a": backend}, data_dir=str(tmp_path), tenancy=TenancyConfig(completion_reserve_tokens=77)) as (
        client,
        _,
    ):
        body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body, headers=bearer(secret))).status_code == 200
    assert backend.requests[-1].max_tokens == 77


async def test_a_local_parallel_slot_holds_for_a_request_longer_than_its_lease() -> None:
    clock = Clock()
    limiter = Limiter(None, TenancyConfig(lease_ttl_s=6, refresh_s=1), clock=clock)
    key, _ = make_key("slow", max_parallel=1)
    first = await limiter.acquire(key, 10)
    for _ in range(10):  # 20 s of one long stream, renewed on every tick
        clock.now += 2
        await limiter.renew()
    assert first.decision.admitted
    assert not (await limiter.acquire(key, 10)).decision.admitted
    await limiter.release(first, 10)
    assert (await limiter.acquire(key, 10)).decision.admitted


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    """Both real stores: a SQLite file, and a real redis-server."""
    if request.param == "sqlite":
        store: KeyStore = store_in(tmp_path)
        yield store
        store.close()
        return
    with run_redis(tmp_path) as server:
        store = RedisKeyStore(sync_client(server.url, 1.0))
        yield store
        store.close()


def test_either_store_keeps_a_revocation_against_a_stale_update(any_store: KeyStore) -> None:
    key, _ = make_key("team", rpm=5)
    any_store.add(key)
    stale = any_store.list_keys()[0]  # `keys update` read it here...
    any_store.replace(msgspec.structs.replace(stale, revoked=123.0))  # ...`keys revoke` wrote meanwhile...
    any_store.replace(msgspec.structs.replace(stale, rpm=50))  # ...and the update lands
    [after] = any_store.list_keys()
    assert (after.rpm, after.revoked) == (50, 123.0)
    assert any_store.version() == 3
    with pytest.raises(KeyStoreError, match="a key named 'team' exists"):
        any_store.add(make_key("team")[0])
    any_store.add_usage({key.id: Usage(requests=2, completion_tokens=5, last_used=7.0)})
    any_store.add_usage({key.id: Usage(requests=1, errors=1, last_used=9.0)})
    assert any_store.usage() == {key.id: Usage(requests=3, completion_tokens=5, errors=1, last_used=9.0)}


async def test_the_environments_admin_key_is_in_force_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Helm chart does: the admin key's secret comes from a Kubernetes Secret, stored nowhere."""
    secret = make_key("x")[1]
    monkeypatch.setenv("KONSILIUM_ADMIN_KEY", secret)
    tenancy = TenancyConfig(admin_key_env="KONSILIUM_ADMIN_KEY")
    async with gateway(tmp_path, tenancy=tenancy) as (client, _):
        assert (await client.get("/admin/keys")).status_code == 401  # keys are asked for now
        listed = await client.get("/admin/keys", headers=bearer(secret))
        chat = await client.post("/v1/chat/completions", json=ask(), headers=bearer(secret))
        wrong = await client.get("/admin/keys", headers=bearer(secret[:-1] + "x"))
    assert (listed.status_code, listed.json()["keys"], chat.status_code, wrong.status_code) == (200, [], 200, 401)
    stored = tmp_path / "keys.sqlite"
    assert not stored.exists() or secret.encode() not in stored.read_bytes()


@pytest.mark.parametrize(("value", "problem"), [(None, "is not set"), ("short", "holds fewer than 32 characters")])
def test_a_missing_or_short_environment_admin_key_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, value: str | None, problem: str
) -> None:
    if value is None:
        monkeypatch.delenv("KONSILIUM_ADMIN_KEY", raising=False)
    else:
        monkeypatch.setenv("KONSILIUM_ADMIN_KEY", value)
    with pytest.raises(ConfigError) as caught:
        env_admin_key("KONSILIUM_ADMIN_KEY")
    assert caught.value.problems == [f"tenancy.admin_key_env: environment variable KONSILIUM_ADMIN_KEY {problem}"]
