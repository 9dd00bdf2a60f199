"""The gateway's side of one worker process: spawn, frame I/O, per-request inboxes, death.

A reader task routes each frame to the inbox of its request. When the process dies, every open
request receives a `BackendError` and every deferred callback runs, so nothing waits forever
and the backend's turn is always handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections.abc import Callable

import msgspec

from konsilium.errors import (
    BackendError,
    BackendUnavailableError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    RequestFailedError,
    UnsupportedParameterError,
)
from model_store.llama_cpp import ipc
from model_store.types import EmbeddingRequest, Embeddings, Event, GenerationRequest

log = logging.getLogger(__name__)

Item = Event | Embeddings | GatewayError | None  # None: the request is done

_FAILURES: dict[str, type[GatewayError]] = {
    "context_length": ContextLengthExceededError,
    "unsupported": UnsupportedParameterError,
    "invalid": InvalidRequestError,
    "internal": RequestFailedError,  # the worker reported it and carries on: not a crash
}


def translate_failure(failed: ipc.Failed) -> GatewayError:
    return _FAILURES[failed.kind](failed.message, param=failed.param)


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, ready: ipc.Ready, model_id: str) -> None:
        self._proc = proc
        self.ready = ready
        self._model_id = model_id
        self._ids = itertools.count(1)
        self._inboxes: dict[int, asyncio.Queue[Item]] = {}
        self._on_done: dict[int, Callable[[], None]] = {}
        self._stopping = False
        self._reader = asyncio.create_task(self._read_frames(), name=f"worker-reader-{model_id}")

    @classmethod
    async def spawn(cls, model_id: str, argv: list[str], timeout_s: float) -> WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "model_store.llama_cpp.worker", *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=ipc.MAX_FRAME,
        )  # fmt: skip
        try:
            first = await asyncio.wait_for(_read_frame(proc), timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, msgspec.DecodeError) as exc:
            await _stop(proc, grace_s=1.0)
            reason = "timed out" if isinstance(exc, TimeoutError) else f"exited ({proc.returncode})"
            raise BackendUnavailableError(f"model {model_id!r} failed to load: worker {reason}") from exc
        if not isinstance(first, ipc.Ready):
            await _stop(proc, grace_s=1.0)
            raise BackendUnavailableError(f"model {model_id!r} failed to load: unexpected frame")
        return cls(proc, first, model_id)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None and not self._reader.done()

    def submit(self, request: GenerationRequest | EmbeddingRequest) -> tuple[int, asyncio.Queue[Item]]:
        request_id = next(self._ids)
        inbox: asyncio.Queue[Item] = asyncio.Queue()
        self._inboxes[request_id] = inbox
        if isinstance(request, EmbeddingRequest):
            self._write(ipc.Embed(id=request_id, request=request))
        else:
            self._write(ipc.Generate(id=request_id, request=request))
        return request_id, inbox

    def abandon(self, request_id: int, on_done: Callable[[], None]) -> None:
        """Cancel a request whose consumer left; `on_done` runs once the worker lets go of it."""
        if request_id not in self._inboxes:
            on_done()
            return
        self._on_done[request_id] = on_done
        self._write(ipc.Cancel(id=request_id))

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping = True
        await _stop(self._proc, grace_s)
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def _write(self, message: ipc.ToWorker) -> None:
        if self._proc.stdin is None or self._proc.stdin.is_closing():
            raise BackendUnavailableError(f"model {self._model_id!r}: worker is not running")
        self._proc.stdin.write(ipc.encode_frame(message))

    async def _read_frames(self) -> None:
        try:
            while True:
                frame = await _read_frame(self._proc)
                if isinstance(frame, ipc.Emit):
                    self._deliver(frame.id, frame.event)
                elif isinstance(frame, ipc.Embedded):  # the whole answer: the request is done
                    self._finish(frame.id, frame.result)
                elif isinstance(frame, (ipc.Done, ipc.Failed)):
                    self._finish(frame.id, None if isinstance(frame, ipc.Done) else translate_failure(frame))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError):
            pass
        finally:
            code = await self._proc.wait()
            level = logging.INFO if self._stopping else logging.WARNING
            log.log(level, "llama.cpp worker for %s (pid %d) exited with %s", self._model_id, self.pid, code)
            for request_id in list(self._inboxes):
                self._finish(request_id, BackendError(f"model {self._model_id!r}: worker process exited ({code})"))

    def _deliver(self, request_id: int, item: Item) -> None:
        inbox = self._inboxes.get(request_id)
        if inbox is not None and request_id not in self._on_done:
            inbox.put_nowait(item)

    def _finish(self, request_id: int, item: Item) -> None:
        self._deliver(request_id, item)
        self._inboxes.pop(request_id, None)
        callback = self._on_done.pop(request_id, None)
        if callback is not None:
            callback()


async def _read_frame(proc: asyncio.subprocess.Process) -> ipc.FromWorker:
    assert proc.stdout is not None
    header = await proc.stdout.readexactly(4)
    payload = await proc.stdout.readexactly(ipc.frame_length(header))
    frame: ipc.FromWorker = ipc.from_worker_decoder.decode(payload)
    return frame


async def _stop(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Close stdin (the worker exits by itself), then SIGTERM, then SIGKILL."""
    if proc.returncode is not None:
        return
    if proc.stdin is not None:
        proc.stdin.close()
    for signal_process in (proc.terminate, proc.kill):
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
            return
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                signal_process()
    await proc.wait()
