"""Keys and limits shared through a real redis-server by two real Konsilium processes, each
serving SmolLM2 in its own llama.cpp worker: what one replica admits, the other counts.

Each test makes its own key with the CLI (`konsilium keys create`, on the same Redis), so their
limits never meet. Requests ask for one or a few tokens: the limits are the subject, not the model.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from konsilium.tenancy.limiter import RELEASE_BATCH_S
from tests.redis_server import RedisServer, run_redis
from tests.servers import ROOT, Server, llama_model, run_server

pytestmark = pytest.mark.e2e

SETTINGS = {"tenancy": {"replicas": 2, "refresh_s": 1.0, "redis_retry_s": 1.0, "redis_timeout_ms": 100}}


class Fleet:
    def __init__(self, redis: RedisServer, config: Path, replicas: list[Server]) -> None:
        self.redis, self.config, self.replicas = redis, config, replicas
        self.admin = ""  # an admin key's secret: /metrics and /admin want one

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "entrypoints.cli", "keys", *args, "--config", str(self.config)]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    def create(self, name: str, *options: str) -> str:
        """A new key, once every replica knows it (within a refresh; listing models costs no limit)."""
        done = self.keys("create", "--name", name, *options)
        assert done.returncode == 0, done.stderr
        secret = done.stdout.strip()
        deadline = time.monotonic() + 10
        for server in self.replicas:
            while httpx.get(f"{server.v1}/models", headers={"x-api-key": secret}).status_code != 200:
                assert time.monotonic() < deadline, f"{server.base_url} does not know the key {name!r}"
                time.sleep(0.05)
        return secret


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("tenancy")
    with run_redis(tmp) as redis:
        settings = {**SETTINGS, "redis_url": redis.url}
        config = tmp / "keys.yaml"
        config.write_text(yaml.safe_dump(settings), encoding="utf-8")
        fleet = Fleet(redis, config, [])
        fleet.admin = fleet.create("ops", "--admin")  # keys are on from the start
        model = llama_model(n_ctx=512, max_concurrency=2)
        with run_server(tmp, [model], **settings) as first, run_server(tmp, [model], **settings) as second:
            fleet.replicas = [first, second]
            yield fleet


def chat(server: Server, secret: str, max_tokens: int = 1, **options: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens, **options}
    headers = {"authorization": f"Bearer {secret}"}
    return httpx.post(f"{server.v1}/chat/completions", json=body, headers=headers, timeout=60)


def metric(server: Server, admin: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", headers={"x-api-key": admin}, timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}(?:\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_request_limit_holds_exactly_across_two_replicas(fleet: Fleet) -> None:
    secret = fleet.create("rpm-ten", "--rpm", "10")
    first_sent = time.time()
    replies = []
    for i in range(16):
        sent = time.time()
        replies.append((sent, chat(fleet.replicas[i % 2], secret), time.time()))
    statuses = [r.status_code for _, r, _ in replies]
    assert statuses == [200] * 10 + [429] * 6, statuses
    first_admitted_by = replies[0][2]  # Redis's clock stamped it between send and answer
    for sent, reply, answered in replies[10:]:
        assert reply.json()["error"]["code"] == "rate_limit_exceeded"
        retry_ms = int(reply.headers["retry-after-ms"])
        # the first admission leaves the window 60 s after it was stamped
        assert first_sent + 60 - answered - 0.05 <= retry_ms / 1000 <= first_admitted_by + 60 - sent + 0.05
        assert reply.headers["retry-after"] == str(math.ceil(retry_ms / 1000))
        assert (reply.headers["x-ratelimit-limit-requests"], reply.headers["x-ratelimit-remaining-requests"]) == (
            "10",
            "0",
        )
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for _, r, _ in replies[:10]]
    assert remaining == list(range(9, -1, -1))  # counted together, whichever replica answered


def test_tokens_are_reserved_up_front_and_the_unused_part_comes_back(fleet: Fleet) -> None:
    secret = fleet.create("tpm", "--tpm", "5000")
    first = chat(fleet.replicas[0], secret, max_tokens=64)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "5000"
    reserved = 5000 - int(first.headers["x-ratelimit-remaining-tokens"])
    usage = first.json()["usage"]
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    assert reserved >= 64 + 1  # max_tokens plus the prompt's estimate (the chat template's tokens are not in it)
    time.sleep(RELEASE_BATCH_S * 5)  # the unused part goes back within a release batch of the answer's end
    second = chat(fleet.replicas[1], secret, max_tokens=64)  # the other replica sees the refund
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 5000 - used - reserved
    too_large = chat(fleet.replicas[0], secret, max_tokens=6000)
    assert too_large.status_code == 429
    assert "retry-after" not in too_large.headers


def test_parallel_requests_are_limited_across_replicas(fleet: Fleet) -> None:
    secret = fleet.create("one-at-a-time", "--max-parallel", "1")
    body = {"model": "auto", "messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 400,
            "stream": True, "temperature": 1.0, "seed": 1}  # fmt: skip
    headers = {"authorization": f"Bearer {secret}"}
    with httpx.stream("POST", f"{fleet.replicas[0].v1}/chat/completions", json=body, headers=headers) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # it is generating
        refused = chat(fleet.replicas[1], secret)
        for _ in lines:
            pass
    assert stream.status_code == 200
    assert refused.status_code == 429
    assert "parallel requests" in refused.json()["error"]["message"]
    time.sleep(RELEASE_BATCH_S * 5)  # the slot goes back within a release batch of the stream's end
    assert chat(fleet.replicas[1], secret).status_code == 200


def test_a_revoked_key_stops_working_on_every_replica_within_the_refresh(fleet: Fleet) -> None:
    secret = fleet.create("leaver")
    assert [chat(s, secret).status_code for s in fleet.replicas] == [200, 200]
    assert fleet.keys("revoke", "leaver").returncode == 0
    revoked_at, stopped = time.monotonic(), {}
    while len(stopped) < 2 and time.monotonic() - revoked_at < 10:
        for i, server in enumerate(fleet.replicas):
            headers = {"authorization": f"Bearer {secret}"}
            if i not in stopped and httpx.get(f"{server.v1}/models", headers=headers).status_code == 401:
                stopped[i] = time.monotonic() - revoked_at
        time.sleep(0.05)
    print(f"revocation took effect after {stopped} s (refresh_s {SETTINGS['tenancy']['refresh_s']})")
    assert sorted(stopped) == [0, 1]
    assert max(stopped.values()) < 3


def test_usage_per_key_adds_up_over_the_replicas(fleet: Fleet) -> None:
    secret = fleet.create("counted")
    for i in range(4):
        assert chat(fleet.replicas[i % 2], secret).status_code == 200
    time.sleep(SETTINGS["tenancy"]["refresh_s"] * 1.5)  # each replica flushes on its next tick
    admin = fleet.create("auditor", "--admin")
    listed = httpx.get(f"{fleet.replicas[0].base_url}/admin/keys", headers={"x-api-key": admin}, timeout=10)
    usage = next(k for k in listed.json()["keys"] if k["name"] == "counted")["usage"]
    assert (usage["requests"], usage["completion_tokens"], usage["errors"]) == (4, 4, 0)
    assert usage["last_used"] is not None
    assert (
        metric(fleet.replicas[0], fleet.admin, "konsilium_key_requests_total", key="counted", status="200", tenant="")
        == 2
    )


def test_redis_failing_never_fails_a_request_and_shared_limits_come_back(fleet: Fleet) -> None:
    secret = fleet.create("through-outage", "--rpm", "1000")
    assert [chat(s, secret).status_code for s in fleet.replicas] == [200, 200]
    assert all(metric(s, fleet.admin, "konsilium_limiter_shared") == 1 for s in fleet.replicas)
    for outage in (fleet.redis.kill, fleet.redis.pause):  # gone (refused), then hung (no answer)
        outage()
        statuses = [chat(fleet.replicas[i % 2], secret).status_code for i in range(10)]
        assert statuses == [200] * 10, statuses
        for server in fleet.replicas:
            assert metric(server, fleet.admin, "konsilium_limiter_shared") == 0
            assert metric(server, fleet.admin, "konsilium_limiter_decisions_total", where="local") > 0
            assert metric(server, fleet.admin, "konsilium_limiter_redis_failures_total", operation="acquire") > 0
            assert httpx.get(f"{server.v1}/models", timeout=10).status_code == 401  # keys still asked for
        if outage == fleet.redis.kill:
            fleet.redis.start()  # the same port, empty: the replicas keep the keys they know
        else:
            fleet.redis.resume()
        time.sleep(SETTINGS["tenancy"]["redis_retry_s"] * 1.2)
        before = [metric(s, fleet.admin, "konsilium_limiter_decisions_total", where="redis") for s in fleet.replicas]
        assert [chat(s, secret).status_code for s in fleet.replicas for _ in range(2)] == [200] * 4
        after = [metric(s, fleet.admin, "konsilium_limiter_decisions_total", where="redis") for s in fleet.replicas]
        assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]
        assert all(metric(s, fleet.admin, "konsilium_limiter_shared") == 1 for s in fleet.replicas)
    log = json.dumps([s.log.read_text() if s.log else "" for s in fleet.replicas])
    assert "limits are per replica" in log
    assert "limits are shared again" in log


def test_the_update_commands_send_the_admin_key(fleet: Fleet) -> None:
    """`konsilium reload` (and `models stage|promote|rollback`) against a server with keys: refused
    without `KONSILIUM_API_KEY`, done with an admin key in it."""
    server = fleet.replicas[0]
    command = [sys.executable, "-m", "entrypoints.cli", "reload", "--url", server.base_url]
    env = {k: v for k, v in os.environ.items() if k != "KONSILIUM_API_KEY"}
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert (refused.returncode, refused.stderr.split(":")[:2]) == (1, ["konsilium", " 401"])
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, env={**env, "KONSILIUM_API_KEY": fleet.admin},
        check=False,
    )  # fmt: skip
    assert server.log is not None
    assert (done.returncode, done.stdout) == (0, f"reloaded {server.log.with_suffix('.yaml')}\n")  # nothing changed
