"""Embeddings inside a llama.cpp worker: each input a sequence of its own, many decoded together.

An embedding model's worker runs this instead of the generation scheduler (`batch.py`). Inputs
wait in arrival order, a request's after the one before; every step puts whole inputs into one
`llama_decode` — one per slot's sequence, up to `n_batch` tokens — so a list is batched, and so
are requests that arrive together. Each input's token vectors are pooled into one — the GGUF's
pooling (`<arch>.pooling_type`), the manifest's `pooling`, or mean for a generative GGUF that
declares none (SmolLM2) — then cut to `dimensions` when asked and normalised to unit length (as
llama.cpp's server answers by default).

Pooled here, not by llama.cpp (`llama_get_embeddings_seq`): measured on SmolLM2, llama.cpp's mean
of a text changed with the other texts in its batch — by up to 0.2 in a unit vector's component
with a KV stream per sequence (a sequence split across its micro-batches), by 1e-3 with one
shared KV buffer — while every token's own vector, with a stream per sequence, was bit-identical
alone and batched. So the context outputs every token (`pooling_type` none) and the mean (in
float64), first or last token is taken here: a text's vector is the same alone or in a list.

`plan_batch`, `pool` and `unit_bytes` are pure; `Embedder` owns the llama.cpp state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import llama_cpp
import numpy
from llama_cpp._internals import LlamaBatch, LlamaContext

from model_store.llama_cpp import ipc
from model_store.llama_cpp.threads import ThreadGovernor
from model_store.types import MAX_EMBEDDING_TOKENS, EmbeddingRequest, Embeddings

if TYPE_CHECKING:
    from llama_cpp._internals import LlamaModel

Pooling = Literal["mean", "cls", "last"]
Vector = numpy.ndarray[tuple[int], numpy.dtype[numpy.float64]]
Rows = numpy.ndarray[tuple[int, int], numpy.dtype[numpy.float32]]
GGUF_POOLING: dict[str, Pooling] = {"1": "mean", "2": "cls", "3": "last"}  # llama.cpp's enum llama_pooling_type
RANK = "4"  # a reranker's classification head: scores, not vectors


class EmbeddingFailure(Exception):
    def __init__(self, kind: ipc.FailureKind, message: str, param: str) -> None:
        super().__init__(message)
        self.kind, self.param = kind, param


@dataclass(frozen=True)
class Pending:
    """One input of a request, waiting for its sequence."""

    job_id: int
    index: int
    tokens: list[int]


@dataclass(eq=False)
class _Job:
    dimensions: int | None
    vectors: list[bytes | None]
    prompt_tokens: int
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = len(self.vectors)


def plan_batch(waiting: Sequence[Pending], sequences: int, budget: int) -> int:
    """How many inputs from the front of the queue one decode takes: at most one per sequence and
    `budget` tokens in all; always the first (no input is longer than the budget)."""
    taken, tokens = 0, 0
    for pending in waiting:
        if taken == sequences or (taken and tokens + len(pending.tokens) > budget):
            break
        taken, tokens = taken + 1, tokens + len(pending.tokens)
    return taken


def pool(rows: Rows, pooling: Pooling) -> Vector:
    """One input's vector from its tokens' (in order), in float64."""
    chosen = rows[:1] if pooling == "cls" else rows[-1:] if pooling == "last" else rows
    vector: Vector = chosen.astype(numpy.float64).mean(axis=0)
    return vector


def unit_bytes(vector: Vector, dimensions: int | None) -> bytes:
    """The first `dimensions` components (all when None), scaled to unit length, as little-endian
    float32; a zero vector stays zero."""
    cut = vector[:dimensions] if dimensions is not None else vector
    norm = float(numpy.linalg.norm(cut))
    return (cut / norm if norm > 0 else cut).astype("<f4").tobytes()


def gguf_pooling(model: LlamaModel, asked: str) -> Pooling:
    """`asked` (the manifest's), else the GGUF's own, else mean; a reranker cannot embed."""
    if asked in ("mean", "cls", "last"):
        return asked  # type: ignore[return-value]
    metadata = model.metadata()
    declared = metadata.get(f"{metadata.get('general.architecture', '')}.pooling_type", "")
    if declared == RANK:
        raise SystemExit("this GGUF is a reranker (pooling rank): it scores pairs and makes no embeddings")
    return GGUF_POOLING.get(declared, "mean")


Send = Callable[[ipc.FromWorker], None]


class Embedder:
    def __init__(
        self,
        ctx: LlamaContext,
        model: LlamaModel,
        *,
        slots: int,
        n_ctx: int,
        n_batch: int,
        pooling: Pooling,
        threads: ThreadGovernor,
        send: Send,
    ) -> None:
        self._ctx = ctx
        self._model = model
        self._memory = ctx.memory
        self._sequences = slots
        self._n_ctx = n_ctx  # the longest input
        self._budget = max(n_batch, n_ctx)  # tokens per decode (the context's n_batch)
        self._pooling: Pooling = pooling
        self._threads = threads
        self._applied_threads = threads.configured
        self._send = send
        self._batch = LlamaBatch(n_tokens=self._budget, embd=0, n_seq_max=1, verbose=False)
        self._n_vocab = model.n_vocab()
        self._n_embd = model.n_embd()
        self._waiting: deque[Pending] = deque()
        self._jobs: dict[int, _Job] = {}

    @property
    def idle(self) -> bool:
        return not self._waiting

    def take(self, message: ipc.Generate | ipc.Embed) -> None:
        """An embedding's inputs join the queue; a refusal (too long, a token outside the
        vocabulary, too many dimensions) answers at once, taking nothing."""
        if isinstance(message, ipc.Generate):  # the store asks an embedding model for vectors only
            self._send(ipc.Failed(id=message.id, kind="unsupported", message="an embedding model", param="model"))
            return
        try:
            inputs = self._tokens(message.request)
        except EmbeddingFailure as exc:
            self._send(ipc.Failed(id=message.id, kind=exc.kind, message=str(exc), param=exc.param))
            return
        count = sum(len(tokens) for tokens in inputs)
        self._jobs[message.id] = _Job(message.request.dimensions, [None] * len(inputs), count)
        self._waiting.extend(Pending(message.id, i, tokens) for i, tokens in enumerate(inputs))

    def _tokens(self, request: EmbeddingRequest) -> list[list[int]]:
        if request.dimensions is not None and request.dimensions > self._n_embd:
            raise EmbeddingFailure(
                "invalid", f"dimensions: at most {self._n_embd} for this model (its vectors' length)", "dimensions"
            )
        texts = [self._model.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in request.texts]
        inputs = texts or [list(tokens) for tokens in request.tokens]
        single = len(inputs) == 1
        for i, tokens in enumerate(inputs):
            where = "input" if single else f"input[{i}]"
            if len(tokens) > self._n_ctx:
                raise EmbeddingFailure(
                    "context_length",
                    f"{where} is {len(tokens)} tokens long; this model embeds at most {self._n_ctx} tokens an input",
                    where,
                )
            if not texts and not all(0 <= t < self._n_vocab for t in tokens):
                raise EmbeddingFailure("invalid", f"{where}: token ids go from 0 to {self._n_vocab - 1}", where)
        total = sum(len(tokens) for tokens in inputs)
        if total > MAX_EMBEDDING_TOKENS:
            raise EmbeddingFailure(
                "invalid", f"input: {total} tokens in all; at most {MAX_EMBEDDING_TOKENS} in one request", "input"
            )
        return inputs

    def cancel(self, job_id: int) -> None:
        """The client left: its inputs leave the queue. Unknown ids finished already."""
        if self._jobs.pop(job_id, None) is None:
            return
        self._waiting = deque(p for p in self._waiting if p.job_id != job_id)
        self._send(ipc.Done(id=job_id))

    def fail_all(self, message: str) -> None:
        """After an unexpected error: every request ends with `Failed`."""
        self._waiting.clear()
        for job_id in list(self._jobs):
            del self._jobs[job_id]
            self._send(ipc.Failed(id=job_id, kind="internal", message=message))

    def step(self) -> None:
        taken = [self._waiting.popleft() for _ in range(plan_batch(self._waiting, self._sequences, self._budget))]
        if not taken:
            return
        if (threads := self._threads.threads) != self._applied_threads:
            llama_cpp.llama_set_n_threads(self._ctx.ctx, threads, threads)
            self._applied_threads = threads
        rows = self._decode(taken)
        if rows is None:
            for job_id in dict.fromkeys(p.job_id for p in taken):
                self._fail(job_id, "llama_decode failed")
            return
        start = 0
        for pending in taken:
            end = start + len(pending.tokens)
            self._deliver(pending, pool(rows[start:end], self._pooling))
            start = end

    def _decode(self, taken: list[Pending]) -> Rows | None:
        """Every token of `taken` (input i in sequence i), each one's vector out; None on failure."""
        if self._memory:  # an encoder-only model keeps no KV cache
            llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch.batch
        batch.n_tokens = 0
        for seq, pending in enumerate(taken):
            for position, token in enumerate(pending.tokens):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = True
                batch.n_tokens += 1
        if llama_cpp.llama_decode(self._ctx.ctx, batch) != 0:
            return None
        out = llama_cpp.llama_get_embeddings(self._ctx.ctx)  # the outputs in batch order
        rows: Rows = numpy.ctypeslib.as_array(out, shape=(batch.n_tokens, self._n_embd))
        return rows

    def _deliver(self, pending: Pending, vector: Vector) -> None:
        job = self._jobs.get(pending.job_id)
        if job is None:
            return
        job.vectors[pending.index] = unit_bytes(vector, job.dimensions)
        job.left -= 1
        if job.left == 0:
            del self._jobs[pending.job_id]
            vectors = tuple(v for v in job.vectors if v is not None)
            self._send(ipc.Embedded(id=pending.job_id, result=Embeddings(vectors, job.prompt_tokens)))

    def _fail(self, job_id: int, message: str) -> None:
        if self._jobs.pop(job_id, None) is not None:
            self._waiting = deque(p for p in self._waiting if p.job_id != job_id)
            self._send(ipc.Failed(id=job_id, kind="internal", message=message))
