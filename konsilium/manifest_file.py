"""Finding the file that declares a model, and rewriting its revision fields in place.

A promoted or rolled-back revision is written back where the operator keeps it: the manifest in
`models_dir`, or the model's entry in the config's `models:` list. A manifest file keeps its
comments and key order — only the rewritten top-level keys are replaced (a key's whole block,
its indented lines with it), and the result is read back and compared before it replaces the
file (atomically, through a temporary file beside it). A config's inline list is written again
as YAML (its comments are lost; the log says so).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from konsilium.manifest import manifest_files

log = logging.getLogger(__name__)

_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:")


def manifest_file(config_path: Path | None, models_dir: Path | None, model_id: str) -> Path | None:
    """The file that declares `model_id`; None for a built-in model (no file at all)."""
    if models_dir is not None and models_dir.is_dir():
        for path in manifest_files(models_dir):
            raw = _read(path)
            if isinstance(raw, dict) and raw.get("id") == model_id:
                return path
    if config_path is not None:
        raw = _read(config_path)
        models = raw.get("models") if isinstance(raw, dict) else None
        if isinstance(models, list) and any(isinstance(m, dict) and m.get("id") == model_id for m in models):
            return config_path
    return None


def write_fields(path: Path, model_id: str, fields: dict[str, Any]) -> None:
    """Set (or, for None, remove) top-level fields of the model's manifest in `path`; `ValueError`
    when the file no longer declares the model (`OSError` when it cannot be read or written)."""
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    if isinstance(raw, dict) and raw.get("id") == model_id:
        expected = _updated(raw, fields)
        edited = _edit_top_level(text, fields)
        if yaml.safe_load(edited) != expected:  # a layout the line edit cannot follow (flow style, anchors)
            log.warning("%s: rewritten without its comments (its layout defeats an in-place edit)", path)
            edited = _dump(expected)
    else:
        models = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(models, list) or not any(isinstance(m, dict) and m.get("id") == model_id for m in models):
            raise ValueError(f"{path} no longer declares {model_id!r}")
        models[:] = [_updated(m, fields) if isinstance(m, dict) and m.get("id") == model_id else m for m in models]
        log.warning("%s: models[%s] rewritten; the file's comments are not kept", path, model_id)
        edited = _dump(raw)
    _replace(path, edited)


def _updated(raw: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    out = {**raw, **{k: v for k, v in fields.items() if v is not None}}
    return {k: v for k, v in out.items() if not (k in fields and fields[k] is None)}


def _edit_top_level(text: str, fields: dict[str, Any]) -> str:
    blocks: list[tuple[str | None, list[str]]] = []  # (top-level key or None, its lines)
    for line in text.splitlines(keepends=True):
        match = _TOP_KEY.match(line)
        if match:
            blocks.append((match.group(1), [line]))
        elif blocks and blocks[-1][0] is not None and line[:1] in (" ", "\t", "-"):
            blocks[-1][1].append(line)  # the key's value continues
        else:
            blocks.append((None, [line]))  # a comment or blank line of the file's own
    out, written = [], set()
    for key, lines in blocks:
        if key in fields:
            written.add(key)
            if fields[key] is not None:
                out.append(_dump({key: fields[key]}))
        else:
            out.extend(lines)
    rest = {k: v for k, v in fields.items() if k not in written and v is not None}
    if rest:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(_dump(rest))
    return "".join(out)


def _dump(data: object) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)


def _read(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
