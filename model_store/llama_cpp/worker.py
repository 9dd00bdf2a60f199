"""The llama.cpp worker process: `python -m model_store.llama_cpp.worker --path FILE ...`.

One process per loaded model, so a crash, a leak or a hostile GGUF file takes down only this
process, and unloading really returns the memory. Frames arrive on stdin (see `ipc.py`); a
reader thread queues them in order, and the main thread runs the batch scheduler (`batch.py`):
between two decode steps it takes what arrived (new requests join, cancelled ones leave), so up
to `--slots` requests generate together. When stdin closes (the gateway is gone) the worker exits.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from typing import TYPE_CHECKING, BinaryIO, Protocol

import msgspec

from model_store.llama_cpp import ipc

if TYPE_CHECKING:
    from llama_cpp._internals import LlamaContext, LlamaModel

    from model_store.llama_cpp.threads import ThreadGovernor

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


def read_forever(channel: Channel, inbox: queue.Queue[ipc.ToWorker | None]) -> None:
    """The reader thread: frames in arrival order, then None when the gateway is gone."""
    while (message := channel.receive()) is not None:
        inbox.put(message)
    inbox.put(_STOP)


def take(inbox: queue.Queue[ipc.ToWorker | None], *, wait: bool) -> list[ipc.ToWorker | None]:
    """Everything that arrived; when `wait` (nothing to decode), block for the first frame."""
    messages = [inbox.get()] if wait else []
    while True:
        try:
            messages.append(inbox.get_nowait())
        except queue.Empty:
            return messages


class Work(Protocol):
    """What the main thread drives: the generation scheduler, or an embedding model's embedder."""

    @property
    def idle(self) -> bool: ...

    def take(self, message: ipc.Generate | ipc.Embed) -> None: ...

    def cancel(self, job_id: int) -> None: ...

    def step(self) -> None: ...

    def fail_all(self, message: str) -> None: ...


def serve(args: argparse.Namespace) -> int:
    from model_store.llama_cpp.threads import ThreadGovernor

    channel = Channel()
    model, ctx = load(args)
    threads = ThreadGovernor(thread_count(args), adaptive=not args.fixed_threads)
    work, supports_fim = (embedder if args.embedding else scheduler)(args, model, ctx, threads, channel)
    channel.send(ipc.Ready(pid=os.getpid(), n_ctx=args.n_ctx, supports_fim=supports_fim))
    inbox: queue.Queue[ipc.ToWorker | None] = queue.Queue()
    threading.Thread(target=read_forever, args=(channel, inbox), daemon=True).start()
    while True:
        for message in take(inbox, wait=work.idle):
            if message is None:
                return 0
            if isinstance(message, ipc.Cancel):
                work.cancel(message.id)
            else:
                work.take(message)
        try:
            work.step()
        except Exception as exc:  # a bug, not a crash: every request in flight ends with a 502
            work.fail_all(f"{type(exc).__name__}: {exc}")


def scheduler(
    args: argparse.Namespace, model: LlamaModel, ctx: LlamaContext, threads: ThreadGovernor, channel: Channel
) -> tuple[Work, bool]:
    from model_store.llama_cpp.batch import Scheduler
    from model_store.llama_cpp.prompts import PromptBuilder

    builder = PromptBuilder(model, family=args.family, emulate_fim=args.fim == "emulate")
    work = Scheduler(
        ctx, builder, slots=args.slots, n_ctx=args.n_ctx, n_batch=args.n_batch, threads=threads, send=channel.send
    )
    return work, builder.fim_ids is not None


def embedder(
    args: argparse.Namespace, model: LlamaModel, ctx: LlamaContext, threads: ThreadGovernor, channel: Channel
) -> tuple[Work, bool]:
    from model_store.llama_cpp.embedder import Embedder, gguf_pooling

    pooling = gguf_pooling(model, args.pooling)
    work = Embedder(
        ctx, model, slots=args.slots, n_ctx=args.n_ctx, n_batch=args.n_batch, pooling=pooling, threads=threads,
        send=channel.send,
    )  # fmt: skip
    return work, False


def thread_count(args: argparse.Namespace) -> int:
    return int(args.n_threads or os.cpu_count() or 1)  # 0: every core


def load(args: argparse.Namespace) -> tuple[LlamaModel, LlamaContext]:
    """The weights once; one context whose KV cache holds `slots` sequences of `n_ctx` each."""
    import llama_cpp
    from llama_cpp._internals import LlamaContext, LlamaModel
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # llama.cpp's own log: errors only (`Llama(verbose=False)` does this)

    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = args.n_gpu_layers
    model = LlamaModel(path_model=args.path, params=model_params, verbose=False)
    params = llama_cpp.llama_context_default_params()
    threads = thread_count(args)
    params.n_ctx = args.n_ctx * args.slots
    params.n_seq_max = args.slots
    # a stream of `n_ctx` cells per slot: a request's attention spans its own cells only, so its
    # results do not depend on what the other slots hold (one shared buffer spans them all, and
    # a longer span regroups the sums: a temperature-0 answer changed with its neighbours)
    params.kv_unified = False
    params.n_batch = params.n_ubatch = max(args.n_batch, args.slots)  # the scheduler's batch (batch.py)
    if args.embedding:  # every token's vector comes out, embedder.py pools them (it says why there)
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        params.n_batch = params.n_ubatch = max(args.n_batch, args.n_ctx)  # an input is never split
    # the prompt's threads too (llama.cpp's default is every core): two workers of one thread
    # each otherwise fight over the cores at every prefill
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    # llama.cpp's CPU flash attention splits a decode's KV cache among the threads, so its sums
    # depend on the thread count (which `threads.py` changes under load): measured 0.54 apart in
    # a logit at 400 tokens, enough to change a temperature-0 answer. Without it the results are
    # bit-identical whatever the threads and the batch (and SmolLM2 decodes as fast here).
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return model, LlamaContext(model=model, params=params, verbose=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="model_store.llama_cpp.worker")
    parser.add_argument("--path", required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--n-threads", type=int, default=0)
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--family", default="", help="the manifest's family (SmolLM2's tool-call syntax)")
    parser.add_argument("--fim", choices=("emulate", "refuse"), default="emulate")
    parser.add_argument("--fixed-threads", action="store_true", help="ignore other processes' load")
    parser.add_argument("--embedding", action="store_true", help="an embedding model: vectors, no text")
    parser.add_argument("--pooling", choices=("gguf", "mean", "cls", "last"), default="gguf")
    return parser.parse_args(argv)


def main() -> int:
    try:
        return serve(parse_args(sys.argv[1:]))
    except (BrokenPipeError, msgspec.DecodeError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
