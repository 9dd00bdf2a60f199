"""Staged model updates: stage a new revision of a model, check it, promote it, roll it back.

`stage(id)` takes the revision (a new GGUF, a new vLLM directory) from the request or the
manifest's `candidate:`, runs the model's control prompts on the active revision, loads the
candidate beside it — or, when the budget is short and nothing is in flight, instead of it — and
runs them again there; `control.judge` compares the two, and a candidate that falls below the
threshold (`updates.max_score_drop`) is unloaded and refused with the report. `promote(id)`
writes the new revision (and the old one as `previous:`) into the manifest's file, then swaps
the entries: requests in flight finish on the old revision, the next one reaches the new one.
`rollback(id)` returns to `previous:` the same way. Each step is logged, counted
(`konsilium_model_updates_total`) and kept for `GET /admin/models/{id}/update`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from konsilium.errors import BackendUnavailableError, ConfigError, ConflictError, GatewayError, InvalidRequestError
from konsilium.manifest import Manifest, Revision
from konsilium.manifest_dir import resolve_model_path
from konsilium.manifest_file import write_fields
from model_store.control import (
    ControlPrompt,
    PromptResult,
    RevisionReport,
    failed,
    judge,
    load_control_prompts,
    result,
    revision_report,
)
from model_store.notices import StoreEvent
from model_store.store import ModelStore
from model_store.types import Finish, TextDelta

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 300.0  # one control prompt, its load included
Step = Literal["stage", "promote", "rollback"]
Outcome = Literal["staged", "refused", "promoted", "rolled_back"]


class UpdateReport(msgspec.Struct, frozen=True):
    model: str
    step: Step
    outcome: Outcome
    at: float  # unix time
    revision: str  # the revision serving the id after this step
    reasons: list[str] = msgspec.field(default_factory=list)  # why a candidate was refused
    active: RevisionReport | None = None
    candidate: RevisionReport | None = None
    beside: bool | None = None  # the candidate loaded beside the active one (False: instead of it)
    manifest: str | None = None  # the file rewritten (none for a built-in model)


class Stager:
    def __init__(
        self,
        store: ModelStore,
        manifest_file: Callable[[str], Path | None],
        *,
        on_step: Callable[[str, str, str], None] | None = None,  # (model, step, outcome): the metrics
        wall_clock: Callable[[], float] = time.time,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self._store = store
        self._file = manifest_file
        self._on_step = on_step
        self._wall = wall_clock
        self._reports: dict[str, UpdateReport] = {}
        self._busy: set[str] = set()
        # held while a promote or rollback rewrites a file and swaps (a reload holds it too)
        self._swapping = lock or asyncio.Lock()

    def report(self, model_id: str) -> UpdateReport | None:
        self._store.manifest_of(model_id)  # 404 for an unknown id
        return self._reports.get(model_id)

    async def stage(self, model_id: str, revision: Revision | None = None) -> UpdateReport:
        active = self._store.manifest_of(model_id)
        with self._exclusive(model_id):
            candidate = await self._candidate_manifest(active, revision or active.candidate)
            prompts, max_tokens = self._control_prompts(active)
            before = await self._check(active, prompts, max_tokens, on_candidate=False)
            self._store.stage(candidate)
            try:
                beside, error = await self._load_candidate(model_id)
                if error:
                    after = revision_report(candidate.revision, candidate.path, [], error)
                else:
                    after = await self._check(candidate, prompts, max_tokens, on_candidate=True)
            except BaseException:  # cancelled, or a bug: never leave an unchecked candidate staged
                self._store.drop_candidate(model_id, restore=True)
                raise
            updates = self._store.config.updates
            reasons = judge(
                before, after, max_score_drop=updates.max_score_drop, min_speed_ratio=updates.min_speed_ratio
            )
            if reasons:  # and an eager active revision unloaded to make room loads again
                self._store.drop_candidate(model_id, restore=True)
            return self._record(
                UpdateReport(
                    model=model_id,
                    step="stage",
                    outcome="refused" if reasons else "staged",
                    at=self._wall(),
                    revision=active.revision,
                    reasons=reasons,
                    active=before,
                    candidate=after,
                    beside=beside,
                )
            )

    async def promote(self, model_id: str) -> UpdateReport:
        return await self._switch(model_id, self._promote)

    async def rollback(self, model_id: str) -> UpdateReport:
        return await self._switch(model_id, self._rollback)

    async def _switch(self, model_id: str, step: Callable[[str], UpdateReport]) -> UpdateReport:
        """Under the lock a reload takes too, one update of the model at a time; `step` writes the
        file and swaps without awaiting, so no request sees half of it."""
        async with self._swapping:
            with self._exclusive(model_id):
                return step(model_id)

    def _promote(self, model_id: str) -> UpdateReport:
        staged = self._reports.get(model_id)
        candidate = self._store.candidate_view(model_id)
        if candidate is None or staged is None or staged.outcome != "staged":
            raise ConflictError(
                f"model {model_id!r} has no staged candidate that passed its control prompts: "
                "stage one first (POST /admin/models/{id}/stage)",
                param="model",
            )
        active = self._store.manifest_of(model_id)
        promoted = self._store.candidate_manifest(model_id)
        manifest = msgspec.structs.replace(promoted, load=active.load, candidate=None, previous=_revision_of(active))
        written = self._write(manifest)
        self._store.promote(manifest)
        return self._record(UpdateReport(
            model=model_id, step="promote", outcome="promoted", at=self._wall(), revision=manifest.revision,
            active=staged.candidate, manifest=written,
        ))  # fmt: skip

    def _rollback(self, model_id: str) -> UpdateReport:
        active = self._store.manifest_of(model_id)
        previous = active.previous
        if previous is None:
            raise ConflictError(f"model {model_id!r} has no previous revision to roll back to", param="model")
        manifest = msgspec.structs.replace(
            active, path=previous.path, revision=previous.revision, checksum_sha256=previous.checksum_sha256,
            candidate=None, previous=None,
        )  # fmt: skip
        written = self._write(manifest)
        self._store.install(manifest)
        return self._record(UpdateReport(
            model=model_id, step="rollback", outcome="rolled_back", at=self._wall(), revision=manifest.revision,
            manifest=written,
        ))  # fmt: skip

    # ---- the steps' parts ------------------------------------------------------------------
    async def _candidate_manifest(self, active: Manifest, revision: Revision | None) -> Manifest:
        if revision is None:
            raise InvalidRequestError(
                f"no candidate revision for {active.id!r}: give `path` (and `revision`) in the request, or "
                "`candidate:` in the model's manifest",
                param="path",
            )
        if active.embedding:
            raise InvalidRequestError(
                f"model {active.id!r} is an embedding model: control prompts check chat answers, so its "
                "revisions are not staged (replace its manifest's path and reload instead)",
                param="model",
            )
        if active.path is None:
            raise InvalidRequestError(
                f"model {active.id!r} is served from {active.url}: only a model whose weights Konsilium runs "
                "(a manifest with `path`) has revisions to stage",
                param="model",
            )
        file = self._file(active.id)
        base = file.parent if file is not None else Path.cwd()
        try:
            path = resolve_model_path(revision.path, base, directory=active.backend_name == "vllm")
        except ValueError as exc:
            raise InvalidRequestError(f"candidate of {active.id!r}: {exc}", param="path") from exc
        digest = revision.checksum_sha256
        if digest is None and path.is_file():  # pinned now, so what was checked is what is promoted
            digest = await asyncio.to_thread(self._store.digest, path)
        name = revision.revision or (f"sha256:{digest[:12]}" if digest else path.name)
        return msgspec.structs.replace(
            active, path=str(path), revision=name, checksum_sha256=digest, load="on_demand", candidate=None,
            previous=None,
        )  # fmt: skip

    def _control_prompts(self, active: Manifest) -> tuple[list[ControlPrompt], int]:
        if active.control_prompts is None:
            raise InvalidRequestError(
                f"model {active.id!r} names no control_prompts in its manifest: a candidate needs prompts to be "
                "checked on (model_store/control.py describes the file)",
                param="model",
            )
        try:
            prompts = load_control_prompts(Path(active.control_prompts))
        except ConfigError as exc:
            raise InvalidRequestError("; ".join(exc.problems), param="model") from exc
        return prompts.prompts, prompts.max_tokens

    async def _load_candidate(self, model_id: str) -> tuple[bool | None, str]:
        """Beside the active revision if the budget allows, else instead of it (when it is idle)."""
        try:
            await self._store.load_candidate(model_id)
            return True, ""
        except BackendUnavailableError as exc:
            short = exc
        except GatewayError as exc:
            return None, exc.message
        try:
            await self._store.unload(model_id)
            await self._store.load_candidate(model_id)
            return False, ""
        except ConflictError:
            return None, f"{short.message}; the active revision is serving, so it cannot make room"
        except GatewayError as exc:
            return False, exc.message

    async def _check(
        self, manifest: Manifest, prompts: list[ControlPrompt], max_tokens: int, *, on_candidate: bool
    ) -> RevisionReport:
        results = []
        for prompt in prompts:
            request = prompt.request(max_tokens)
            events = (self._store.stream_candidate if on_candidate else self._store.stream)(manifest.id, request)
            try:
                async with asyncio.timeout(CONTROL_TIMEOUT_S):
                    results.append(await _answer(prompt, events))
            except GatewayError as exc:
                results.append(failed(prompt, exc.message))
            except TimeoutError:
                results.append(failed(prompt, f"no answer within {CONTROL_TIMEOUT_S:.0f} s"))
            finally:
                await events.aclose()
        return revision_report(manifest.revision, manifest.path, results)

    def _write(self, manifest: Manifest) -> str | None:
        file = self._file(manifest.id)
        if file is None:
            log.warning("%s is built in: its new revision is not written anywhere", manifest.id)
            return None
        fields: dict[str, object] = {
            "path": _relative(manifest.path, file.parent),
            "revision": manifest.revision or None,
            "checksum_sha256": manifest.checksum_sha256,
            "candidate": None,
            "previous": None if manifest.previous is None else _revision_dict(manifest.previous, file.parent),
        }
        try:
            write_fields(file, manifest.id, fields)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConflictError(f"{file}: the new revision could not be written ({exc}); nothing changed") from exc
        return str(file)

    def _record(self, report: UpdateReport) -> UpdateReport:
        self._reports[report.model] = report
        if self._on_step is not None:
            self._on_step(report.model, report.step, report.outcome)
        log.info(
            "model update: %s %s -> %s (revision %s)%s", report.step, report.model, report.outcome, report.revision,
            "".join(f"; {r}" for r in report.reasons),
        )  # fmt: skip
        return report

    @contextlib.contextmanager
    def _exclusive(self, model_id: str) -> Iterator[None]:
        """One update step per model at a time: a second is refused (409), never interleaved."""
        if model_id in self._busy:
            raise ConflictError(f"an update of {model_id!r} is running; try again when it ends", param="model")
        self._busy.add(model_id)
        try:
            yield
        finally:
            self._busy.discard(model_id)


async def _answer(prompt: ControlPrompt, events: AsyncGenerator[StoreEvent, None]) -> PromptResult:
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    tokens = 0
    async for event in events:
        if isinstance(event, TextDelta):
            first = first or time.perf_counter()
            parts.append(event.text)
        elif isinstance(event, Finish):
            tokens = event.usage.completion_tokens
    ended = time.perf_counter()
    ttft = None if first is None else round((first - started) * 1000, 1)
    return result(prompt, "".join(parts), ttft_ms=ttft, tokens=tokens, seconds=ended - (first or ended))


def _revision_of(manifest: Manifest) -> Revision | None:
    if manifest.path is None:
        return None
    return Revision(path=manifest.path, revision=manifest.revision, checksum_sha256=manifest.checksum_sha256)


def _relative(path: str | None, directory: Path) -> str | None:
    if path is None:
        return None
    resolved = Path(path)
    return str(resolved.relative_to(directory.resolve())) if resolved.is_relative_to(directory.resolve()) else path


def _revision_dict(revision: Revision, directory: Path) -> dict[str, object]:
    out: dict[str, object] = {"path": _relative(revision.path, directory)}
    if revision.revision:
        out["revision"] = revision.revision
    if revision.checksum_sha256:
        out["checksum_sha256"] = revision.checksum_sha256
    return out
