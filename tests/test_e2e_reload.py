"""Hot reload on a real server: `POST /admin/reload` adds a model, removes one while a stream is
running on it (the stream completes, its worker then exits), and refuses an invalid change with
the start-up's path-named problems while the server serves on; `SIGHUP` and `serve --watch`
reload too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import ROOT, SMOLLM2, Server, free_port, pid_alive, serve_config

BASE = {"id": "base", "family": "smollm2", "role": "primary", "load": "eager", "path": str(SMOLLM2), "n_ctx": 1024}
EXTRA = {"id": "extra", "family": "smollm2", "path": str(SMOLLM2), "n_ctx": 2048}


def write_manifest(directory: Path, manifest: dict[str, object]) -> Path:
    path = directory / f"{manifest['id']}.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return path


@contextlib.contextmanager
def models_dir_server(root: Path, *args: str) -> Iterator[tuple[Server, Path]]:
    models = root / "models"
    models.mkdir(parents=True)
    write_manifest(models, BASE)
    port = free_port()
    config = root / "konsilium.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "models_dir": "models"}), encoding="utf-8")
    with serve_config(config, port, *args) as server:
        yield server, models


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    with models_dir_server(tmp_path_factory.mktemp("reload")) as running:
        yield running


def model_ids(server: Server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.v1}/models", timeout=10).json()["data"]]


def reload(server: Server) -> httpx.Response:
    return httpx.post(f"{server.base_url}/admin/reload", timeout=60)


def eventually(condition: Callable[[], bool], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_model_added_to_models_dir_serves_after_a_reload(served: tuple[Server, Path]) -> None:
    server, models = served
    assert "extra" not in model_ids(server)
    write_manifest(models, EXTRA)
    response = reload(server)
    assert response.status_code == 200, response.text
    assert response.json()["models"] == {
        "added": ["extra"], "removed": [], "changed": [], "updated": [], "unchanged": ["base"],
    }  # fmt: skip
    assert model_ids(server)[:2] == ["base", "extra"]
    again = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "reload", "--url", server.base_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (again.returncode, again.stdout) == (0, f"reloaded {models.parent / 'konsilium.yaml'}\n")  # nothing new
    body = {"model": "extra", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    answered = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)
    assert (answered.status_code, answered.json()["model"]) == (200, "extra")


def test_a_model_removed_while_it_streams_finishes_its_stream_then_unloads(served: tuple[Server, Path]) -> None:
    server, models = served
    write_manifest(models, EXTRA)
    assert reload(server).status_code == 200
    body = {"model": "extra", "messages": [{"role": "user", "content": "Tell a long story about the sea."}],
            "max_tokens": 700, "stream": True, "temperature": 0.8, "seed": 5}  # fmt: skip
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        pid = next(m for m in server.ready()["models"] if m["id"] == "extra")["pid"]  # type: ignore[index]
        assert isinstance(pid, int)
        (models / "extra.yaml").unlink()
        response = reload(server)
        assert response.status_code == 200, response.text
        assert response.json()["models"]["removed"] == ["extra"]
        assert pid_alive(pid)  # still serving the stream
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["choices"][0]["finish_reason"] in ("length", "stop")
    assert sum('"content"' in r for r in rest) > 20  # it streamed on after the reload
    assert eventually(lambda: not pid_alive(pid))
    gone = httpx.post(f"{server.v1}/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=30)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "model_not_found")
    assert "extra" not in model_ids(server)


def test_a_changed_model_gets_a_new_process_and_a_described_one_keeps_its_own(served: tuple[Server, Path]) -> None:
    server, models = served
    pid = server.model_state("base")["pid"]
    assert isinstance(pid, int)
    write_manifest(models, {**BASE, "description": "the same weights, described"})
    response = reload(server)
    assert (response.status_code, response.json()["models"]["updated"]) == (200, ["base"])
    assert server.model_state("base")["pid"] == pid
    write_manifest(models, {**BASE, "n_ctx": 2048})
    try:
        response = reload(server)
        assert (response.status_code, response.json()["models"]["changed"]) == (200, ["base"])
        assert eventually(lambda: server.model_state("base")["state"] == "ready" and not pid_alive(pid))
        assert server.model_state("base")["pid"] != pid  # eager: loaded again at once
        body = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60).status_code == 200
    finally:
        write_manifest(models, BASE)
        assert reload(server).status_code == 200
        assert eventually(lambda: server.model_state("base")["state"] == "ready")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"n_ctxx": 4096}, "models/base.yaml: Object contains unknown field `n_ctxx`"),
        ({"load": "on_demand"}, "models/base.yaml: load: must be eager when role=primary"),
        ({"path": "/nowhere/model.gguf"}, "models/base.yaml: path: no such file: /nowhere/model.gguf"),
    ],
)
def test_an_invalid_change_is_refused_and_the_running_config_serves_on(
    served: tuple[Server, Path], change: dict[str, object], problem: str
) -> None:
    server, models = served
    pid = server.model_state("base")["pid"]
    write_manifest(models, {**BASE, **change})
    try:
        response = reload(server)
    finally:
        write_manifest(models, BASE)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_config", None)
    assert error["message"].startswith("the config was not reloaded: ")
    assert problem in error["message"]
    body = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60).status_code == 200
    assert server.model_state("base")["pid"] == pid  # the same process: nothing was applied


def test_a_setting_only_a_restart_applies_is_refused_by_name(served: tuple[Server, Path]) -> None:
    server, models = served
    config = models.parent / "konsilium.yaml"
    original = config.read_text(encoding="utf-8")
    config.write_text(original + "max_body_bytes: 4096\n", encoding="utf-8")
    try:
        response = reload(server)
    finally:
        config.write_text(original, encoding="utf-8")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"the config was not reloaded: {config}: max_body_bytes: changed, and takes a restart to apply "
        "(the running value stays)"
    )


def test_sighup_and_watch_reload(tmp_path: Path) -> None:
    with models_dir_server(tmp_path / "hup") as (server, models):
        write_manifest(models, EXTRA)
        assert server.process.pid
        assert pid_alive(server.process.pid)
        os.kill(server.process.pid, signal.SIGHUP)
        assert eventually(lambda: "extra" in model_ids(server))
    with models_dir_server(tmp_path / "watch", "--watch") as (server, models):
        write_manifest(models, EXTRA)
        assert eventually(lambda: "extra" in model_ids(server))
        (models / "extra.yaml").unlink()
        assert eventually(lambda: "extra" not in model_ids(server))
