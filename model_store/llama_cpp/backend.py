"""`LlamaCppBackend`: one GGUF model, one worker process, up to `slots` requests decoding together.

A slot (`asyncio.Semaphore`, which wakes waiters in arrival order) is held from the moment a
request is sent to the worker until the worker lets go of it, so the worker never holds more
requests than it has slots and the rest wait here in FIFO. A consumer that leaves early hands its
slot on only when the worker confirms the cancel (within one token); a consumer that leaves while
queued simply stops waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

from konsilium.errors import BackendError, BackendUnavailableError, GatewayError
from konsilium.manifest import Manifest
from model_store.backend import Health, ModelInfo, State, wrong_kind
from model_store.estimate import llama_cpp_need_mb
from model_store.llama_cpp.process import Item, WorkerProcess
from model_store.llama_cpp.tokenizer import PromptCounter, open_counter
from model_store.types import EmbeddingRequest, Embeddings, Event, GenerationRequest


class LlamaCppBackend:
    def __init__(self, manifest: Manifest) -> None:
        assert manifest.path is not None, "checked when the manifest was loaded"
        self._config = manifest
        self._path = manifest.path
        self._worker: WorkerProcess | None = None
        self._state: State = "unloaded"
        self._detail = ""
        self._slots = manifest.concurrency
        self._turns = asyncio.Semaphore(self._slots)
        self._queued = 0
        self._in_flight = 0
        self._load_lock = asyncio.Lock()
        self._created = int(Path(self._path).stat().st_mtime)
        self._counter: PromptCounter | None = None  # read on the first load, kept after unloads

    @property
    def info(self) -> ModelInfo:
        ready = self._worker.ready if self._worker else None
        return ModelInfo(
            id=self._config.id,
            owned_by=self._config.owned_by,
            created=self._created,
            context_length=ready.n_ctx if ready else self._config.context_window,
            supports_fim=bool(ready and ready.supports_fim),
        )

    @property
    def pid(self) -> int | None:
        return self._worker.pid if self._worker and self._worker.alive else None

    async def load(self) -> None:
        async with self._load_lock:
            if self._worker is not None and self._worker.alive:
                return
            if self._worker is not None:  # it died: reap it before starting another
                await self._worker.stop(grace_s=0.5)
                self._worker = None
            self._state = "loading"
            # the prompt counter reads the vocabulary here while the worker loads the model there
            counting = None if self._counter is not None else asyncio.ensure_future(
                asyncio.to_thread(open_counter, self._path, self._config.family, self._config.fim == "emulate")
            )  # fmt: skip
            try:
                self._worker = await WorkerProcess.spawn(
                    self._config.id, self._worker_argv(), self._config.load_timeout_s
                )
            except GatewayError as exc:
                self._state, self._detail = "failed", exc.message
                raise
            if counting is not None:
                self._counter = await counting
            self._state, self._detail = "ready", ""

    async def unload(self) -> None:
        async with self._load_lock:
            if self._worker is None:
                return
            self._state = "unloading"
            await self._worker.stop()
            self._worker, self._state = None, "unloaded"

    async def stream(self, request: GenerationRequest, adapter: str | None = None) -> AsyncGenerator[Event, None]:
        assert adapter is None, "llama.cpp models declare no adapters"
        worker, request_id, inbox = await self._submit(request)
        finished = False
        try:
            while (item := await inbox.get()) is not None:
                if isinstance(item, GatewayError):
                    finished = True
                    raise item
                assert not isinstance(item, Embeddings), "a generation's worker sends events"
                yield item
            finished = True
        finally:
            if finished:
                self._release()
            else:
                worker.abandon(request_id, self._release)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """The worker batches the inputs (and other requests' inputs) into its slots' sequences."""
        if not self._config.embedding:
            raise wrong_kind(self._config.id, embedding=False)
        worker, request_id, inbox = await self._submit(request)
        try:
            item = await inbox.get()
        except BaseException:  # the caller left: the turn goes once the worker lets go of it
            worker.abandon(request_id, self._release)
            raise
        self._release()
        if isinstance(item, GatewayError):
            raise item
        if not isinstance(item, Embeddings):
            raise BackendError(f"model {self._config.id!r}: the worker ended an embedding without vectors")
        return item

    async def _submit(
        self, request: GenerationRequest | EmbeddingRequest
    ) -> tuple[WorkerProcess, int, asyncio.Queue[Item]]:
        """Wait for a turn (FIFO) and hand the request to the worker; the turn is the caller's
        to give back (`_release`, or through `abandon` once the worker lets go)."""
        self._queued += 1
        try:
            await self._turns.acquire()
        finally:
            self._queued -= 1
        self._in_flight += 1
        try:
            worker = self._worker
            if worker is None or not worker.alive:  # the store loads; a worker that died meanwhile
                raise BackendUnavailableError(f"model {self._config.id!r} is not running")
            request_id, inbox = worker.submit(request)
        except BaseException:
            self._release()
            raise
        return worker, request_id, inbox

    def _release(self) -> None:
        self._in_flight -= 1
        self._turns.release()

    def health(self) -> Health:
        alive = self._worker is not None and self._worker.alive
        crashed = self._state == "ready" and not alive  # restarts on the next request
        return Health(
            state="unloaded" if crashed else self._state,
            ready=alive,
            detail="worker exited; it restarts on the next request" if crashed else self._detail,
            pid=self.pid,
            in_flight=self._in_flight,
            queued=self._queued,
        )

    def memory_need_mb(self) -> int:
        return llama_cpp_need_mb(Path(self._path), self._config.context_window, self._slots)

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return self._counter.count(request, limit=self.info.context_length or 0) if self._counter else None

    def _worker_argv(self) -> list[str]:
        c = self._config
        argv = [
            "--path", self._path, "--n-ctx", str(c.context_window), "--slots", str(self._slots),
            "--n-threads", str(c.n_threads), "--n-batch", str(c.n_batch), "--n-gpu-layers", str(c.n_gpu_layers),
            "--family", c.family, "--fim", c.fim,
        ]  # fmt: skip
        if c.embedding:
            argv += ["--embedding", "--pooling", c.pooling or "gguf"]
        return argv if c.adaptive_threads else [*argv, "--fixed-threads"]
