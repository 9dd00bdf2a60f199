"""`konsilium pull` without the internet: a Hugging Face-layout cache directory with
HF_HUB_OFFLINE=1 stands in for the hub (huggingface-hub resolves the file from the cache exactly
as it would after a download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import ROOT, SMOLLM2

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_hub_cache(root: Path, repo: str, files: dict[str, Path | bytes]) -> Path:
    """The layout huggingface-hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, snapshot / name)
        else:
            (snapshot / name).write_bytes(content)
    return root


def konsilium(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    files: dict[str, Path | bytes] = {"tiny.Q4_1.gguf": SMOLLM2, "broken.Q8_0.gguf": b"not a gguf" * 10}
    return offline_hub_cache(tmp_path / "hub", "acme/tiny-GGUF", files)


def test_pull_writes_a_hash_pinned_manifest_that_validates(tmp_path: Path, cache: Path) -> None:
    models = tmp_path / "models"
    result = konsilium("pull", "acme/tiny-GGUF", "tiny.Q4_1.gguf", "--models-dir", str(models), cache=cache)
    assert result.returncode == 0, result.stderr
    written = models / "tiny.q4_1.yaml"
    assert result.stdout.strip() == f"wrote {written}"
    manifest = yaml.safe_load(written.read_text())
    assert manifest == {
        "id": "tiny.q4_1",
        "family": "llama",
        "path": str(cache / "models--acme--tiny-GGUF" / "snapshots" / COMMIT / "tiny.Q4_1.gguf"),
        "quant": "Q4_1",
        "context_length": 8192,
        "revision": f"acme/tiny-GGUF@{COMMIT}",
        "checksum_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "description": "acme/tiny-GGUF/tiny.Q4_1.gguf",
    }
    validated = konsilium("models", "validate", str(models), cache=cache)
    assert (validated.returncode, validated.stdout.splitlines()[-1]) == (0, "1 manifests, 0 problems")


def test_pull_refuses_a_file_that_is_not_a_gguf(tmp_path: Path, cache: Path) -> None:
    models = tmp_path / "models"
    result = konsilium("pull", "acme/tiny-GGUF", "broken.Q8_0.gguf", "--models-dir", str(models), cache=cache)
    assert result.returncode == 1
    assert "broken.Q8_0.gguf is not a readable GGUF file" in result.stderr
    assert not models.exists()


def test_pull_of_a_file_the_hub_does_not_have_fails_cleanly(tmp_path: Path, cache: Path) -> None:
    result = konsilium("pull", "acme/tiny-GGUF", "absent.gguf", "--models-dir", str(tmp_path), cache=cache)
    assert result.returncode == 1
    assert result.stderr.startswith("konsilium pull: ")
    assert "Traceback" not in result.stderr
