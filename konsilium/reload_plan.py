"""What a new config changes, decided before anything is touched (pure).

A running gateway can take new models, routing rules, councils, privacy terms, the memory budget
and the admin switches; what its sockets, limits store and telemetry were built from needs a
restart, and a reload that changes one of those is refused (the running config stays). A model
whose manifest changed only in what nobody running reads from the file (its description, its
staged revisions, its queue bound) keeps its process.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from konsilium.config import Config
from konsilium.manifest import Manifest

# fields read once, at start-up, by the server, the key store, the response store or telemetry
RESTART_ONLY = (
    "host", "port", "max_body_bytes", "max_url_bytes", "max_header_bytes", "max_headers", "trusted_proxies",
    "log_level", "cache_dir", "data_dir", "redis_url", "redis_url_env", "tenancy", "responses", "telemetry",
)  # fmt: skip
# manifest fields the store reads from the entry on each use, or nothing running reads at all
IN_PLACE = frozenset({
    "description", "license", "metadata", "owned_by", "avg_latency_tokens_per_s", "idle_unload_seconds",
    "max_queue", "candidate", "previous", "control_prompts",
})  # fmt: skip


class ModelChanges(msgspec.Struct, frozen=True):
    added: list[str]
    removed: list[str]
    changed: list[str]  # a new process: its old one finishes its requests, then unloads
    updated: list[str]  # the same process, the new manifest
    unchanged: list[str]


def restart_problems(running: Config, new: Config, source: str) -> list[str]:
    return [
        f"{source}: {name}: changed, and takes a restart to apply (the running value stays)"
        for name in RESTART_ONLY
        if getattr(running, name) != getattr(new, name)
    ]


def model_changes(running: Sequence[Manifest], new: Sequence[Manifest]) -> ModelChanges:
    before = {m.id: m for m in running}
    after = {m.id: m for m in new}
    kept = [i for i in after if i in before]
    return ModelChanges(
        added=[i for i in after if i not in before],
        removed=[i for i in before if i not in after],
        changed=[i for i in kept if _process_fields(before[i]) != _process_fields(after[i])],
        updated=[i for i in kept if before[i] != after[i] and _process_fields(before[i]) == _process_fields(after[i])],
        unchanged=[i for i in kept if before[i] == after[i]],
    )


def _process_fields(manifest: Manifest) -> dict[str, object]:
    fields = msgspec.structs.asdict(manifest)
    return {k: v for k, v in fields.items() if k not in IN_PLACE}
