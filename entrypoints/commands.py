"""What `konsilium ps`, `konsilium models list` and `konsilium pull` print."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from konsilium.config import Config
from konsilium.manifest import Manifest
from model_store.estimate import GGUFError, llama_cpp_need_mb
from model_store.types import GenerationRequest, Message
from routing.requests import RouteRequest


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def ps(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/admin/models", timeout=10) as response:
            models = json.load(response)["models"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        print(f"konsilium ps: cannot read {url}/admin/models: {exc}", file=sys.stderr)
        return 1
    columns = {
        "MODEL": "id", "STATE": "state", "BACKEND": "backend", "PID": "pid", "EST MB": "estimated_mb",
        "MEASURED MB": "measured_mb", "IN FLIGHT": "in_flight", "QUEUED": "queued", "LAST USED": "last_used",
        "LOAD S": "load_seconds",
    }  # fmt: skip
    print(table(list(columns), [[m.get(k) for k in columns.values()] for m in models]))
    return 0


def list_models(config: Config) -> int:
    rows = [
        [m.id, m.role, m.backend_name, m.format, m.quant, m.context_window, m.load, _estimate(m)] for m in config.models
    ]
    print(table(["MODEL", "ROLE", "BACKEND", "FORMAT", "QUANT", "CONTEXT", "LOAD", "EST MB"], rows))
    return 0


def _estimate(manifest: Manifest) -> int | str:
    if manifest.memory_mb is not None:
        return manifest.memory_mb
    if manifest.backend_name != "llama_cpp" or manifest.path is None:
        return 0
    try:
        return llama_cpp_need_mb(Path(manifest.path), manifest.context_window, manifest.concurrency)
    except GGUFError as exc:
        return f"unreadable ({exc})"


def pull(repo: str, filename: str, models_dir: Path, revision: str | None, model_id: str | None) -> int:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from entrypoints.pull import pull as fetch

    try:
        written = fetch(repo, filename, models_dir, revision=revision, model_id=model_id)
    except (HfHubHTTPError, LocalEntryNotFoundError, GGUFError, OSError) as exc:
        print(f"konsilium pull: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


def route(config: Config, text: str, system: str, model: str, role: str | None) -> int:
    """What `POST /admin/route` answers — the dispatcher's own `explain` on the same store views,
    here with nothing loaded."""
    from entrypoints.app import build_dispatcher
    from gateway.routed import explain

    messages = (*((Message(role="system", content=system),) if system else ()), Message(role="user", content=text))
    role_decision, decision = asyncio.run(
        build_dispatcher(config).explain(
            GenerationRequest(kind="chat", messages=messages), RouteRequest(model=model, role=role)
        )
    )
    print(json.dumps(explain(role_decision, decision, config.addressable()), ensure_ascii=False, indent=2))
    return 0
