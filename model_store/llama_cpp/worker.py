"""The llama.cpp worker process: `python -m model_store.llama_cpp.worker --path FILE ...`.

One process per loaded model, so a crash, a leak or a hostile GGUF file takes down only this
process, and unloading really returns the memory. Frames arrive on stdin (see `ipc.py`); a
reader thread files `Generate`s in order and marks `Cancel`s, while the main thread generates
one request at a time and checks for a cancel after every token. When stdin closes (the gateway
is gone) the worker exits.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from typing import BinaryIO

import msgspec

from model_store.llama_cpp import ipc

_STOP = None


class Channel:
    """Owns the frame pipe: stdout is moved aside so stray C-level prints cannot corrupt it."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        self._in: BinaryIO = os.fdopen(os.dup(0), "rb", buffering=0)

    def send(self, message: ipc.FromWorker) -> None:
        self._out.write(ipc.encode_frame(message))

    def receive(self) -> ipc.ToWorker | None:
        header = self._read(4)
        if header is None:
            return None
        payload = self._read(ipc.frame_length(header))
        return None if payload is None else ipc.to_worker_decoder.decode(payload)

    def _read(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self._in.read(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data


class Inbox:
    """Generate requests in arrival order, and the ids that were cancelled."""

    def __init__(self) -> None:
        self.requests: queue.Queue[ipc.Generate | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def read_forever(self, channel: Channel) -> None:
        while (message := channel.receive()) is not None:
            if isinstance(message, ipc.Cancel):
                with self._lock:
                    self._cancelled.add(message.id)
            else:
                self.requests.put(message)
        self.requests.put(_STOP)

    def is_cancelled(self, request_id: int) -> bool:
        with self._lock:
            return request_id in self._cancelled

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.discard(request_id)


def serve(args: argparse.Namespace) -> int:
    from llama_cpp import Llama

    from model_store.llama_cpp.failure import GenerationFailure
    from model_store.llama_cpp.generation import Generator

    channel = Channel()
    threads = args.n_threads or os.cpu_count()
    llm = Llama(
        model_path=args.path,
        n_ctx=args.n_ctx,
        n_threads=threads,
        # the prompt's threads too (llama-cpp-python's default is every core): two workers of one
        # thread each otherwise fight over the cores at every prefill
        n_threads_batch=threads,
        n_batch=args.n_batch,
        n_gpu_layers=args.n_gpu_layers,
        logits_all=args.logits_all,
        verbose=False,
    )
    generator = Generator(llm, logits_all=args.logits_all)
    channel.send(ipc.Ready(pid=os.getpid(), n_ctx=generator.n_ctx, supports_fim=generator.fim_ids is not None))
    inbox = Inbox()
    threading.Thread(target=inbox.read_forever, args=(channel,), daemon=True).start()
    while (job := inbox.requests.get()) is not _STOP:
        assert job is not None
        try:
            if not inbox.is_cancelled(job.id):
                for event in generator.run(job.request, lambda: inbox.is_cancelled(job.id)):
                    channel.send(ipc.Emit(id=job.id, event=event))
            channel.send(ipc.Done(id=job.id))
        except GenerationFailure as exc:
            channel.send(ipc.Failed(id=job.id, kind=exc.kind, message=str(exc), param=exc.param))
        except Exception as exc:  # the worker reports and carries on; the gateway maps it to 502
            channel.send(ipc.Failed(id=job.id, kind="internal", message=f"{type(exc).__name__}: {exc}"))
        inbox.forget(job.id)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="model_store.llama_cpp.worker")
    parser.add_argument("--path", required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--n-threads", type=int, default=0)
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--logits-all", action="store_true")
    return parser.parse_args(argv)


def main() -> int:
    try:
        return serve(parse_args(sys.argv[1:]))
    except (BrokenPipeError, msgspec.DecodeError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
