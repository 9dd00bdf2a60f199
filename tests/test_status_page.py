"""The status page's parts without a browser: the ring of recent requests (gateway/recent.py),
the snapshot `GET /admin/status` (exact fields; no prompt or answer unless content recording is
on), the page's files, and the admin guards over both. In process, with scripted backends; the
page in a real Chromium against a real server: tests/test_ui_browser.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import TestClient

from entrypoints.app import create_app
from gateway.observe import RequestRecord
from gateway.recent import CONTENT_CHARS, RecentRequests
from konsilium.config import Config, RoleRoute, RoutingConfig, TargetRef, TelemetryConfig
from konsilium.errors import BackendError
from tests.scripted import ScriptedBackend, answer
from tests.test_admin_guard import FORBIDDEN
from tests.test_council_inprocess import backends as council_backends
from tests.test_council_inprocess import said
from tests.test_council_inprocess import settings as council_settings
from tests.test_inprocess import ask, serving
from tests.test_keys import add, bearer, error

SECRET_PROMPT = "my password is hunter2"


def record(request_id: str, **fields: Any) -> RequestRecord:
    return RequestRecord(request_id=request_id, inference=True, role="dev", model="a", **fields)


def as_json(ring: RecentRequests) -> Any:
    return msgspec.json.decode(msgspec.json.encode(ring.newest_first()))


def test_the_ring_keeps_the_newest_requests_newest_first() -> None:
    ticks = iter(range(100))
    ring = RecentRequests(3, clock=lambda: float(next(ticks)))
    for n in range(5):
        ring.add(record(f"r{n}"), "/v1/chat/completions", 200, 0.25)
    assert [(r.request_id, r.time) for r in ring.newest_first()] == [("r4", 4.0), ("r3", 3.0), ("r2", 2.0)]


def test_a_recent_request_is_what_the_access_log_says_and_no_text() -> None:
    ring = RecentRequests(clock=lambda: 1700000000.1234)
    done = record("r1", stream=True, route="trigger:тест", fallbacks=("b",), ttft_ms=12.345, prompt_tokens=7,
                  completion_tokens=3, error="", key="ci", prompt=SECRET_PROMPT, answer="hello")  # fmt: skip
    ring.add(done, "/v1/chat/completions", 200, 0.12345)
    assert as_json(ring) == [{
        "time": 1700000000.123, "request_id": "r1", "path": "/v1/chat/completions", "status": 200,
        "duration_ms": 123.5, "stream": True, "role": "dev", "model": "a", "route": "trigger:тест",
        "fallbacks": ["b"], "ttft_ms": 12.3, "prompt_tokens": 7, "completion_tokens": 3, "error": "", "key": "ci",
    }]  # fmt: skip


def test_with_content_recording_the_ring_keeps_prompt_and_answer_cut_short() -> None:
    ring = RecentRequests(record_content=True)
    ring.add(record("r1", prompt="x" * (CONTENT_CHARS + 10), answer="hello"), "/v1/completions", 200, 0.1)
    ring.add(record("r2"), "/v1/embeddings", 200, 0.1)  # nothing recorded for an embedding: neither field
    newest, first = as_json(ring)
    assert (first["prompt"], first["answer"]) == ("x" * CONTENT_CHARS, "hello")
    assert "prompt" not in newest
    assert "answer" not in newest


# ---- GET /admin/status ---------------------------------------------------------------------------

STATUS_FIELDS = ["time", "started", "record_content", "models", "budget", "recent"]
RECENT_FIELDS = [
    "time", "request_id", "path", "status", "duration_ms", "stream", "role", "model", "route", "fallbacks",
    "ttft_ms", "prompt_tokens", "completion_tokens", "error", "key",
]  # fmt: skip


def timed(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without its clock readings, which are checked for being numbers."""
    assert all(isinstance(entry[k], float) and entry[k] > 0 for k in ("time", "duration_ms", "ttft_ms"))
    return {k: v for k, v in entry.items() if k not in ("time", "duration_ms", "ttft_ms", "request_id")}


async def test_the_snapshot_shows_models_budget_and_recent_requests_without_text() -> None:
    backends = {"a": ScriptedBackend("a", replies=[[BackendError("crashed")]]), "b": ScriptedBackend("b")}
    chain = RoleRoute(targets=[TargetRef(model="a"), TargetRef(model="b")])
    routing = RoutingConfig(roles={"dev": chain}, breaker_failures=1)
    async with serving(backends, routing=routing) as (client, _):
        headers = {"x-request-id": "req-1", "x-konsilium-role": "dev"}
        chat = {"model": "auto", "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 4}
        assert (await client.post("/v1/chat/completions", json=chat, headers=headers)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=ask("nope"))).status_code == 404
        reply = await client.get("/admin/status")
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        assert SECRET_PROMPT not in reply.text  # neither the prompt nor the answer
        assert "hello" not in reply.text
        status = reply.json()
        assert list(status) == STATUS_FIELDS
        assert status["record_content"] is False
        assert status["models"] == (await client.get("/admin/models")).json()["models"]
        assert [(m["id"], m["state"], m["breaker"], m["in_flight"], m["queued"]) for m in status["models"]] == [
            ("a", "ready", "open", 0, 0), ("b", "ready", "closed", 0, 0),
        ]  # fmt: skip
        assert status["budget"] == (await client.get("/admin/budget")).json()
        missing, answered = status["recent"]  # newest first
        assert list(answered) == RECENT_FIELDS
        assert answered["request_id"] == "req-1"
        assert timed(answered) == {
            "path": "/v1/chat/completions", "status": 200, "stream": False, "role": "dev", "model": "b",
            "route": "header", "fallbacks": ["a"], "prompt_tokens": 3, "completion_tokens": 1, "key": "",
            "error": "backend_error",  # the first target's, as in the access log line
        }  # fmt: skip
        assert (missing["status"], missing["model"], missing["role"], missing["ttft_ms"]) == (404, "nope", "", None)
        assert len(missing["request_id"]) == 32  # one of its own, as the access log has


async def test_the_status_polls_are_not_requests_the_page_lists() -> None:
    async with serving({"a": ScriptedBackend("a")}) as (client, _):
        for _ in range(3):
            assert (await client.get("/admin/status")).json()["recent"] == []
        assert (await client.get("/ui")).status_code == 200
        assert (await client.get("/admin/status")).json()["recent"] == []


async def test_with_content_recording_the_snapshot_shows_prompt_and_answer() -> None:
    backends = {"a": ScriptedBackend("a", replies=[answer("hello there")])}
    async with serving(backends, telemetry=TelemetryConfig(record_content=True)) as (client, _):
        chat = {"model": "a", "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": SECRET_PROMPT}]}  # fmt: skip
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
        status = (await client.get("/admin/status")).json()
        assert status["record_content"] is True
        (entry,) = status["recent"]
        assert list(entry) == [*RECENT_FIELDS, "prompt", "answer"]
        assert (entry["prompt"], entry["answer"], entry["route"]) == (SECRET_PROMPT, "hello there", "model")


async def test_a_council_is_listed_as_one_request_routed_by_its_name() -> None:
    models = council_backends()
    for name in ("a", "b", "c", "d"):
        models[name].replies = [said(f"answer of {name}")]
    async with serving(models, **council_settings()) as (client, _):
        chat = {"model": "konsilium", "messages": [{"role": "user", "content": "Review this."}]}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
        (entry,) = (await client.get("/admin/status")).json()["recent"]
        shown = (entry["role"], entry["route"], entry["model"], entry["status"])
        assert shown == ("council", "council:default", "d", 200)  # the Director's model answered


# ---- the page and the guards -----------------------------------------------------------------------


def test_non_loopback_clients_get_neither_the_page_nor_its_data() -> None:
    with TestClient(app=create_app(Config(models=[], memory_budget_mb=100))) as client:  # host "testclient"
        for path in ("/admin/status", "/ui", "/ui/ui.js", "/ui/ui.css"):
            refused = client.get(path)
            assert (path, refused.status_code, refused.json()) == (path, 403, FORBIDDEN)


def test_the_page_and_its_files_come_from_the_package() -> None:
    config = Config(models=[], memory_budget_mb=100, admin_loopback_only=False)
    with TestClient(app=create_app(config)) as client:
        page = client.get("/ui")
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert '<script src="/ui/ui.js" defer></script>' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for name, kind in (("ui.js", "text/javascript"), ("ui.css", "text/css")):
            served = client.get(f"/ui/{name}")
            shipped = (Path(__file__).parents[1] / "gateway" / "static" / name).read_bytes()
            assert (served.status_code, served.headers["content-type"], served.content) == (
                200, f"{kind}; charset=utf-8", shipped,
            )  # fmt: skip
        unknown = client.get("/ui/index.html")  # only the page's own files, by name
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
        assert client.get("/admin/status").json()["models"] == []


async def test_with_keys_the_data_wants_an_admin_key_and_the_page_none(tmp_path: Path) -> None:
    _, user = add(tmp_path, "ci")
    _, admin = add(tmp_path, "ops", admin=True)
    async with serving({"a": ScriptedBackend("a")}, data_dir=str(tmp_path)) as (client, _):
        refused = await client.get("/admin/status", headers=bearer(user))
        assert (refused.status_code, refused.json()) == (
            403, error("permission_denied", "/admin/status needs an admin key (keys create --admin)."),
        )  # fmt: skip
        assert (await client.get("/admin/status")).status_code == 401
        assert (await client.get("/admin/status", headers=bearer(admin))).status_code == 200
        assert (await client.get("/ui")).status_code == 200  # a browser sends no key: the page asks for one
