"""Continuous batching inside a llama.cpp worker: up to `slots` requests decode together.

One llama.cpp context holds one KV sequence per slot (`n_seq_max = slots`), each in its own
stream of `n_ctx` cells (`kv_unified` off): memory is slots x context, no request can crowd out
another, and a request's results do not depend on its neighbours. Every step
the scheduler puts into one `llama_decode`: the token each generating slot sampled last, then
prompt chunks of the newly admitted requests in arrival order, up to `n_batch` tokens. Then each
slot whose logits came out samples with its own chain and its `Job` turns the token into events.
A request joins between two steps; a cancelled one leaves between two steps, so its slot is free
within one token.

Prefix reuse: a slot keeps its KV cache after its request ends. A new request takes the free slot
whose cache shares the longest prefix with its prompt and decodes only the rest. (Copying a busy
slot's prefix into a free one, `llama_memory_seq_cp` across streams, is left out: it copies a
whole stream, and long prompts arriving together already answer unlike one by one, see
DESIGN.md "Determinism".) Recurrent and hybrid models cannot trim a sequence, so there every
request starts from an empty one. The batch is laid out in sequence order: llama.cpp splits it into one
forward pass per run of consecutive sequence ids.

`plan_step` and `choose_slot` are pure; `Scheduler` owns the llama.cpp state.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy
from llama_cpp._internals import LlamaBatch, LlamaContext

from model_store.llama_cpp import ipc
from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.generation import Job
from model_store.llama_cpp.prompts import PromptBuilder
from model_store.llama_cpp.threads import ThreadGovernor
from model_store.types import Event, GenerationRequest


@dataclass(eq=False)
class Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # the tokens this sequence's KV cache holds
    job: Job | None = None
    job_id: int = 0
    admitted: int = 0  # arrival order: prompt chunks are decoded first come, first served
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    sampled: int | None = None  # the token sampled last, decoded in the next step


@dataclass(frozen=True)
class Chunk:
    """A slot's share of one decode: `tokens` at positions from `start`; `logits` when the slot
    samples from the last of them."""

    slot: Slot
    tokens: list[int]
    start: int
    logits: bool


@dataclass(frozen=True)
class Placement:
    slot: Slot
    keep: int  # prompt tokens whose KV cache is reused


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choose_slot(slots: Sequence[Slot], prompt: Sequence[int]) -> Placement | None:
    """The free slot sharing the longest prefix with `prompt` (None when all are busy). At least
    the prompt's last token is decoded again: its logits give the first token."""
    free = [s for s in slots if s.job is None]
    if not free:
        return None
    best = max(free, key=lambda s: common_prefix(s.cached, prompt))
    return Placement(slot=best, keep=min(common_prefix(best.cached, prompt), max(len(prompt) - 1, 0)))


def plan_step(slots: Sequence[Slot], budget: int) -> list[Chunk]:
    """One decode's work: every generating slot's last token, then prompt chunks by arrival."""
    chunks = [Chunk(s, [s.sampled], len(s.cached), True) for s in slots if s.job is not None and s.sampled is not None]
    room = budget - len(chunks)
    for s in sorted((s for s in slots if s.job is not None and s.pending), key=lambda s: s.admitted):
        if room <= 0:
            break
        part = s.pending[:room]
        chunks.append(Chunk(s, part, len(s.cached), len(part) == len(s.pending)))
        room -= len(part)
    return chunks


Send = Callable[[ipc.FromWorker], None]


class Scheduler:
    def __init__(
        self,
        ctx: LlamaContext,
        builder: PromptBuilder,
        *,
        slots: int,
        n_ctx: int,
        n_batch: int,
        threads: ThreadGovernor,
        send: Send,
    ) -> None:
        self._ctx = ctx
        self._threads = threads
        self._applied_threads = threads.configured
        self._memory = ctx.memory
        self._builder = builder
        self._send = send
        self._n_batch = max(n_batch, slots)  # room for every slot's token in every step
        self._batch = LlamaBatch(n_tokens=self._n_batch, embd=0, n_seq_max=1, verbose=False)
        self._n_vocab = builder.model.n_vocab()
        self.n_ctx = n_ctx  # each slot's own stream
        self.slots = [Slot(seq=i) for i in range(slots)]
        model = builder.model.model
        self._reuse = not (llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model))
        self._waiting: deque[tuple[int, Job]] = deque()
        self._arrivals = itertools.count()

    @property
    def idle(self) -> bool:
        return not self._waiting and all(s.job is None for s in self.slots)

    def take(self, message: ipc.Generate | ipc.Embed) -> None:
        if isinstance(message, ipc.Embed):  # the store asks a generative model for text only
            self._send(ipc.Failed(id=message.id, kind="unsupported", message="not an embedding model", param="model"))
        else:
            self.submit(message.id, message.request)

    def submit(self, job_id: int, request: GenerationRequest) -> None:
        """Refusals (context length, bad grammar, unknown tool) answer at once, taking no slot."""
        try:
            job = Job(request, self._builder, self.n_ctx)
        except GenerationFailure as exc:
            self._send(ipc.Failed(id=job_id, kind=exc.kind, message=str(exc), param=exc.param))
            return
        except Exception as exc:  # a chat template's raise_exception, a Jinja error: this request's
            self._send(ipc.Failed(id=job_id, kind="internal", message=f"{type(exc).__name__}: {exc}"))
            return
        self._waiting.append((job_id, job))

    def cancel(self, job_id: int) -> None:
        """The client left: its slot is free before the next step. Unknown ids finished already."""
        for entry in self._waiting:
            if entry[0] == job_id:
                self._waiting.remove(entry)
                entry[1].close()
                self._send(ipc.Done(id=job_id))
                return
        for slot in self.slots:
            if slot.job is not None and slot.job_id == job_id:
                self._release(slot, ipc.Done(id=job_id))
                return

    def fail_all(self, message: str) -> None:
        """After an unexpected error: every request ends with `Failed`, every cache is dropped."""
        while self._waiting:
            job_id, job = self._waiting.popleft()
            job.close()
            self._send(ipc.Failed(id=job_id, kind="internal", message=message))
        for slot in self.slots:
            self._forget(slot)
            if slot.job is not None:
                self._fail(slot, "internal", message)

    def step(self) -> None:
        self._admit()
        chunks = plan_step(self.slots, self._n_batch)
        if not chunks:
            return
        if (threads := self._threads.threads) != self._applied_threads:
            llama_cpp.llama_set_n_threads(self._ctx.ctx, threads, threads)
            self._applied_threads = threads
        batch = self._batch.batch
        batch.n_tokens = 0
        sample_at: list[tuple[Slot, int]] = []
        for chunk in sorted(chunks, key=lambda c: c.slot.seq):
            for offset, token in enumerate(chunk.tokens):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, chunk.start + offset, 1
                batch.seq_id[i][0] = chunk.slot.seq
                batch.logits[i] = False
                batch.n_tokens += 1
            if chunk.logits:
                batch.logits[batch.n_tokens - 1] = True
                sample_at.append((chunk.slot, batch.n_tokens - 1))
        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            for chunk in chunks:
                self._forget(chunk.slot)
                self._fail(chunk.slot, "internal", f"llama_decode failed ({status})")
            return
        for chunk in chunks:
            slot = chunk.slot
            slot.cached.extend(chunk.tokens)
            if slot.pending:
                del slot.pending[: len(chunk.tokens)]
            else:
                slot.sampled = None
        for slot, index in sample_at:
            self._sample(slot, index)

    def _admit(self) -> None:
        while self._waiting:
            job_id, job = self._waiting[0]
            placement = choose_slot(self.slots, job.prompt)
            if placement is None:
                return
            self._waiting.popleft()
            slot = placement.slot
            keep = self._keep(placement)
            slot.job, slot.job_id, slot.admitted = job, job_id, next(self._arrivals)
            job.cached = keep
            slot.pending, slot.sampled = job.prompt[keep:], None
            self._emit(slot, job.opening())

    def _keep(self, placement: Placement) -> int:
        """Make the slot's sequence hold the prompt's first `keep` tokens; how many it holds."""
        slot, keep = placement.slot, placement.keep
        if not self._reuse or keep == 0:
            self._forget(slot)
            return 0
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, keep, -1):
            self._forget(slot)  # llama.cpp could not trim it: start from an empty sequence
            return 0
        del slot.cached[keep:]
        return keep

    def _sample(self, slot: Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        token = job.sampler.sample(self._ctx, index)  # applies the chain and accepts the token
        ctx, n_vocab = self._ctx.ctx, self._n_vocab

        def logits() -> numpy.ndarray[tuple[int], numpy.dtype[numpy.float32]]:
            return numpy.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))

        try:
            events = job.feed(token, logits)
        except GenerationFailure as exc:
            self._fail(slot, exc.kind, str(exc), exc.param)
            return
        except Exception as exc:  # this request's bug: the other slots carry on
            self._fail(slot, "internal", f"{type(exc).__name__}: {exc}")
            return
        self._emit(slot, events)
        if job.finished:
            self._release(slot, ipc.Done(id=slot.job_id))
        else:
            slot.sampled = token

    def _emit(self, slot: Slot, events: list[Event]) -> None:
        for event in events:
            self._send(ipc.Emit(id=slot.job_id, event=event))

    def _fail(self, slot: Slot, kind: ipc.FailureKind, message: str, param: str | None = None) -> None:
        self._release(slot, ipc.Failed(id=slot.job_id, kind=kind, message=message, param=param))

    def _release(self, slot: Slot, last: ipc.Done | ipc.Failed) -> None:
        """The slot is free; its KV cache stays for the next request with the same prefix."""
        if slot.job is not None:
            slot.job.close()
        slot.job, slot.pending, slot.sampled = None, [], None
        self._send(last)

    def _forget(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        slot.cached = []
