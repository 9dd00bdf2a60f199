"""Staged model updates on a real server and real SmolLM2 revisions: stage → the control prompts
pass → promote while a stream runs on the old revision (it completes; the next request is the new
one's; the manifest on disk names it) → rollback; and a candidate that answers worse is refused
with its report, by the admin API and by `konsilium models stage`.

The revisions are copies of the packaged GGUF (the same weights: they answer alike), and a copy
whose chat template ignores the conversation (the same weights, a broken revision)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from konsilium.config import DEFAULT_MODEL
from tests.servers import ROOT, SMOLLM2, Server, free_port, pid_alive, serve_config

MODEL = "smollm2"
MANIFEST = """\
# the model the tests update: this comment stays
id: smollm2
family: smollm2
role: primary
load: eager
path: smollm2-r1.gguf
revision: r1
n_ctx: 2048
control_prompts: pkg:model_store/control_prompts/smollm2-135m-instruct.yaml
"""


def broken_revision(source: Path, target: Path) -> None:
    """SmolLM2's weights under a chat template that drops the conversation for a fixed question:
    a revision that loads and answers, but not what it is asked."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(target, arch=str(arch.contents()), endianess=reader.endianess)
    template = "{{ '<|im_start|>user\\nTell me about bananas.<|im_end|>\\n<|im_start|>assistant\\n' }}"
    copy_with_new_metadata(
        reader, writer, {"tokenizer.chat_template": MetadataDetails(gguf.GGUFValueType.STRING, template)}, []
    )


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("updates") / "models"
    directory.mkdir()
    for name in ("smollm2-r1.gguf", "smollm2-r2.gguf"):
        shutil.copyfile(SMOLLM2, directory / name)
    broken_revision(SMOLLM2, directory / "smollm2-broken.gguf")
    (directory / "smollm2.yaml").write_text(MANIFEST, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[Server]:
    port = free_port()
    config = models_dir.parent / "konsilium.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "models_dir": "models"}), encoding="utf-8")
    with serve_config(config, port) as running:
        yield running


def post(server: Server, path: str, body: object = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=600)


def admin_model(server: Server) -> dict[str, object]:
    models = httpx.get(f"{server.base_url}/admin/models", timeout=10).json()["models"]
    return next(m for m in models if m["id"] == MODEL)


def chat(server: Server, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **fields}
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)


def wait_until_gone(pid: int) -> bool:
    deadline = time.monotonic() + 20
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def test_stage_promote_during_a_stream_and_roll_back(server: Server, models_dir: Path) -> None:
    staged = post(server, f"/admin/models/{MODEL}/stage", {"path": "smollm2-r2.gguf", "revision": "r2"})
    assert staged.status_code == 200, staged.text
    report = staged.json()
    assert (report["outcome"], report["revision"], report["beside"], report["reasons"]) == ("staged", "r1", True, [])
    active, candidate = report["active"], report["candidate"]
    assert (active["revision"], candidate["revision"]) == ("r1", "r2")
    assert candidate["path"] == str(models_dir / "smollm2-r2.gguf")
    assert [r["name"] for r in candidate["results"]] == ["arithmetic", "sky", "json", "opposite"]
    assert active["passed"] == candidate["passed"] == 4, (active["results"], candidate["results"])
    assert [r["answer"] for r in candidate["results"]] == [
        r["answer"] for r in active["results"]
    ]  # greedy, same weights
    assert candidate["tokens_per_s"] > 0
    assert candidate["ttft_ms_p50"] > 0
    # both revisions booked at once, the candidate under its own key
    booked = httpx.get(f"{server.base_url}/admin/budget", timeout=10).json()["models"]
    assert set(booked) == {MODEL, f"{MODEL}@candidate-1"}
    update = httpx.get(f"{server.base_url}/admin/models/{MODEL}/update", timeout=10).json()
    assert (update["revision"], update["candidate"]["state"], update["last"]["outcome"]) == ("r1", "ready", "staged")
    new_pid = update["candidate"]["pid"]
    old_pid = admin_model(server)["pid"]
    assert new_pid != old_pid

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
            "max_tokens": 700, "stream": True, "temperature": 0.8, "seed": 3}  # fmt: skip
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["model"] == MODEL
        promoted = post(server, f"/admin/models/{MODEL}/promote")
        assert promoted.status_code == 200, promoted.text
        assert (promoted.json()["outcome"], promoted.json()["revision"]) == ("promoted", "r2")
        assert admin_model(server)["revision"] == "r2"  # the next request's
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    chunks = [json.loads(r) for r in rest[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert sum(bool(c["choices"][0]["delta"].get("content")) for c in chunks) > 20  # it streamed on after the swap

    answered = chat(server)
    assert answered.status_code == 200, answered.text
    serving = admin_model(server)
    assert (serving["revision"], serving["pid"]) == ("r2", new_pid)
    assert wait_until_gone(old_pid)  # the old revision unloaded once its stream ended
    on_disk = yaml.safe_load((models_dir / "smollm2.yaml").read_text(encoding="utf-8"))
    assert (on_disk["path"], on_disk["revision"]) == ("smollm2-r2.gguf", "r2")
    assert on_disk["checksum_sha256"] == DEFAULT_MODEL.checksum_sha256  # pinned when it was staged
    assert on_disk["previous"] == {"path": "smollm2-r1.gguf", "revision": "r1"}
    text = (models_dir / "smollm2.yaml").read_text(encoding="utf-8")
    assert text.startswith("# the model the tests update: this comment stays\n")
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert 'konsilium_model_updates_total{model="smollm2",outcome="staged",step="stage"} 1.0' in metrics
    assert 'konsilium_model_updates_total{model="smollm2",outcome="promoted",step="promote"} 1.0' in metrics

    rolled = post(server, f"/admin/models/{MODEL}/rollback")
    assert rolled.status_code == 200, rolled.text
    assert (rolled.json()["outcome"], rolled.json()["revision"]) == ("rolled_back", "r1")
    assert chat(server).status_code == 200
    serving = admin_model(server)
    assert serving["revision"] == "r1"
    assert serving["pid"] not in (old_pid, new_pid)
    assert wait_until_gone(new_pid)
    on_disk = yaml.safe_load((models_dir / "smollm2.yaml").read_text(encoding="utf-8"))
    assert (on_disk["path"], on_disk["revision"], "previous" in on_disk) == ("smollm2-r1.gguf", "r1", False)
    again = post(server, f"/admin/models/{MODEL}/rollback")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_a_candidate_that_answers_worse_is_refused_with_its_report(server: Server, models_dir: Path) -> None:
    manifest = models_dir / "smollm2.yaml"
    before = manifest.read_text(encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "models", "stage", MODEL, "--path", "smollm2-broken.gguf",
         "--revision", "broken", "--url", server.base_url],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith(f"stage {MODEL}: refused (serving revision r1)\n"), run.stdout
    assert "refused: score 0." in run.stdout
    assert "(updates.max_score_drop)" in run.stdout
    assert re.search(r"\n  candidate arithmetic: expected a match for /4/ \(answered .Bananas", run.stdout), run.stdout
    report = httpx.get(f"{server.base_url}/admin/models/{MODEL}/update", timeout=10).json()
    last = report["last"]
    assert (last["outcome"], report["candidate"]) == ("refused", None)
    assert last["candidate"]["score"] < last["active"]["score"] == 1.0
    booked = httpx.get(f"{server.base_url}/admin/budget", timeout=10).json()["models"]
    assert list(booked) == [MODEL]  # the refused candidate unloaded
    refused = post(server, f"/admin/models/{MODEL}/promote")
    assert refused.status_code == 409
    assert "no staged candidate" in refused.json()["error"]["message"]
    assert manifest.read_text(encoding="utf-8") == before
    assert chat(server).status_code == 200  # the active revision serves on


@pytest.mark.parametrize(
    ("model", "body", "status", "param", "message"),
    [
        ("nope", {"path": "x.gguf"}, 404, "model", "The model 'nope' does not exist."),
        (MODEL, {"path": 5}, 400, "path", "the stage request: Expected `str`, got `int` - at `$.path`"),
        (MODEL, {"path": "missing.gguf"}, 400, "path", "candidate of 'smollm2': no such file: "),
        (MODEL, None, 400, "path", "no candidate revision for 'smollm2': give `path`"),
    ],
)
def test_a_stage_request_that_cannot_be_served_is_refused_clearly(
    server: Server, model: str, body: object, status: int, param: str, message: str
) -> None:
    response = post(server, f"/admin/models/{model}/stage", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["message"][: len(message)]) == (param, message)


@pytest.fixture(scope="module")
def tight_server(models_dir: Path) -> Iterator[Server]:
    """A budget that holds one SmolLM2 (~340 MB measured) but not two."""
    port = free_port()
    config = models_dir.parent / "tight.yaml"
    settings = {"host": "127.0.0.1", "port": port, "models_dir": "models", "memory_budget_mb": 500}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    with serve_config(config, port) as running:
        yield running


def test_when_the_budget_is_short_the_candidate_is_checked_instead_of_the_active(
    tight_server: Server, models_dir: Path
) -> None:
    old_pid = admin_model(tight_server)["pid"]
    assert isinstance(old_pid, int)
    staged = post(tight_server, f"/admin/models/{MODEL}/stage", {"path": "smollm2-r2.gguf", "revision": "r2b"})
    assert staged.status_code == 200, staged.text
    report = staged.json()
    assert (report["outcome"], report["beside"]) == ("staged", False)
    assert report["candidate"]["passed"] == report["active"]["passed"] == 4
    assert wait_until_gone(old_pid)  # unloaded to make room
    booked = httpx.get(f"{tight_server.base_url}/admin/budget", timeout=10).json()["models"]
    assert list(booked) == [f"{MODEL}@candidate-1"]
    promoted = post(tight_server, f"/admin/models/{MODEL}/promote")
    assert promoted.status_code == 200, promoted.text
    assert chat(tight_server).status_code == 200
    serving = admin_model(tight_server)
    assert (serving["revision"], serving["state"]) == ("r2b", "ready")
    booked = httpx.get(f"{tight_server.base_url}/admin/budget", timeout=10).json()["models"]
    assert list(booked) == [MODEL]
    # a refused candidate checked instead of the active one: the eager active revision loads again
    pid = serving["pid"]
    refused = post(tight_server, f"/admin/models/{MODEL}/stage", {"path": "smollm2-broken.gguf"})
    assert refused.status_code == 200, refused.text
    assert (refused.json()["outcome"], refused.json()["beside"]) == ("refused", False)
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", refused.json()["candidate"]["revision"])  # named by its checksum
    assert wait_until_gone(pid)
    deadline = time.monotonic() + 60
    while admin_model(tight_server)["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    restored = admin_model(tight_server)
    assert (restored["state"], restored["revision"]) == ("ready", "r2b")
