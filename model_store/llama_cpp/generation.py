"""One request in a slot of a llama.cpp worker: its prompt, its sampler chain (penalties,
grammar, top-k/p, temperature, seed) and what each sampled token becomes — text held back only
while it could still become a stop sequence, tool-call pieces, logprobs, exact token counts.

The scheduler (`batch.py`) decodes many jobs in one batch and pushes each job its token; the job
never buffers a whole answer, and a cancelled job is simply dropped between two tokens. This
module runs only in the worker process.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import llama_cpp
import numpy
from llama_cpp._internals import LlamaSampler

from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.grammar import Grammar, json_grammar, tool_calls_grammar
from model_store.llama_cpp.prompts import PromptBuilder
from model_store.llama_cpp.stops import StopMatcher
from model_store.llama_cpp.tool_calls import ToolCallReader
from model_store.types import (
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

# llama.cpp's defaults (llama-cpp-python's `Llama.generate`), used when the client leaves them out
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
TOP_K, MIN_P, PENALTY_LAST_N = 40, 0.05, 64
JSON_PARAM = "response_format.json_schema.schema"

Logits = Callable[[], "numpy.ndarray[tuple[int], numpy.dtype[numpy.float32]]"]


@dataclass(frozen=True)
class NamedCall:
    """The one tool the answer must call (`tool_choice` names it, or `required` with one tool):
    the grammar is its parameters', and every token is its arguments."""

    name: str
    call_id: str


class Job:
    """Built when the request arrives (a refusal raises `GenerationFailure` before any slot is
    taken); then `opening()`, one `feed()` per sampled token until `finished`."""

    def __init__(self, request: GenerationRequest, builder: PromptBuilder, n_ctx: int) -> None:
        self.request = request
        self.prompt = builder.prompt_tokens(request)
        room = n_ctx - len(self.prompt)
        if room < 1:
            raise GenerationFailure(
                "context_length",
                f"This model's maximum context length is {n_ctx} tokens; the prompt has "
                f"{len(self.prompt)} tokens. Shorten the prompt.",
                "messages" if request.kind == "chat" else "prompt",
            )
        # Clients (Continue: 4096 by default) ask for more than is left; like llama.cpp we clamp
        # to the room left instead of refusing every long conversation.
        self._max_tokens = min(request.max_tokens or room, room)
        self._named = _named_call(request)
        calling = request.tools and request.tool_choice != "none" and self._named is None
        required = request.tool_choice == "required"
        self._reader = ToolCallReader(builder.tool_syntax, _call_ids(), required=required) if calling else None
        self.sampler = _sampler_chain(request, self._grammar(builder), builder)
        self._builder = builder
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # a JSON answer ends where its grammar says: a stop string must not cut it broken
        self._stops = StopMatcher(() if request.json_output else request.stop)
        self._produced = 0
        self.finished = False
        self.cached = 0  # prompt tokens the slot's KV cache already held (set when it is placed)

    def close(self) -> None:
        self.sampler.close()

    def opening(self) -> list[Event]:
        named = self._named
        return [ToolCallDelta(index=0, id=named.call_id, name=named.name, arguments="")] if named else []

    def feed(self, token: int, logits: Logits) -> list[Event]:
        """The events of one sampled token; the last list ends with `Finish`. `logits` reads the
        row the token was sampled from (only for logprobs; valid until the next decode)."""
        if llama_cpp.llama_vocab_is_eog(self._builder.vocab, token):
            return self._finish("stop")
        self._produced += 1
        events, hit = self._answer(self._decoder.decode(self._token_bytes(token)), token, logits)
        if hit:
            return events + self._finish("stop")
        if self._produced >= self._max_tokens:
            return events + self._finish("length")
        return events

    def _token_bytes(self, token: int) -> bytes:
        """The token's text; a tool-call marker that is a special token (Mistral's
        `[TOOL_CALLS]`) is read as its text, where other special tokens write nothing."""
        piece = self._builder.piece(token)
        if piece or self._reader is None:
            return piece
        special = self._builder.special_text(token)
        syntax = self._reader.syntax
        return special.encode() if special in (syntax.trigger, syntax.close) else b""

    def _answer(self, text: str, token: int | None, logits: Logits | None) -> tuple[list[Event], bool]:
        """Text to events: a named call's arguments, or content (through the stop strings) and
        the calls the reader found."""
        if self._named is not None:
            return ([ToolCallDelta(index=0, arguments=text)] if text else []), False
        calls: list[ToolCallDelta] = []
        if self._reader is not None:
            text, calls = self._reader.feed(text)
            if self._reader.calling:  # what the stop strings held back is content before the calls
                text = self._stops.flush(text)
        content, hit = self._content(text, token, logits)
        return [*content, *calls], hit

    def _content(self, text: str, token: int | None, logits: Logits | None) -> tuple[list[Event], bool]:
        if not text or self._stops.hit:
            return [], False
        text, hit = self._stops.feed(text)
        if not text:
            return [], hit
        logprobs = self._logprobs(token, logits) if token is not None and logits is not None else ()
        return [TextDelta(text=text, logprobs=logprobs)], hit

    def _finish(self, reason: FinishReason) -> list[Event]:
        self.finished = True
        events, _ = self._answer(self._decoder.decode(b"", final=True), None, None)
        if self._reader is not None:
            tail, calls = self._reader.flush()
            events += self._content(tail, None, None)[0] + list(calls)
        if not self._stops.hit and (tail := self._stops.flush("")):
            events.append(TextDelta(text=tail))
        called = self._named is not None or (self._reader is not None and self._reader.calls > 0)
        if called and reason == "stop":
            reason = "tool_calls"
        usage = Usage(prompt_tokens=len(self.prompt), completion_tokens=self._produced, cached_tokens=self.cached)
        return [*events, Finish(reason=reason, usage=usage)]

    def _grammar(self, builder: PromptBuilder) -> Grammar | None:
        request = self.request
        if self._named is not None:
            index = next(i for i, t in enumerate(request.tools) if t.name == self._named.name)
            parameters = request.tools[index].parameters
            param = f"tools[{index}].function.parameters"
            return json_grammar(parameters, param, builder.vocab) if parameters is not None else None
        if self._reader is not None:
            syntax = self._reader.syntax
            return tool_calls_grammar(
                syntax,
                request.tools,
                parallel=request.parallel_tool_calls,
                lazy=request.tool_choice == "auto",  # else "required": calls from the first token
                trigger_token=builder.single_token(syntax.trigger),
                vocab=builder.vocab,
            )
        json_output = request.json_output
        return json_grammar(json_output.schema, JSON_PARAM, builder.vocab) if json_output else None

    def _logprobs(self, token: int, logits: Logits) -> tuple[TokenLogprob, ...]:
        if self.request.top_logprobs is None:
            return ()
        row = logits().astype(numpy.float64)
        shifted = row - row.max()
        logprobs = shifted - numpy.log(numpy.exp(shifted).sum())
        n = self.request.top_logprobs
        best = numpy.argpartition(-logprobs, n)[:n] if n < len(logprobs) else numpy.arange(len(logprobs))
        top = [int(i) for i in best[numpy.argsort(-logprobs[best], kind="stable")]]
        text = self._text
        return (
            TokenLogprob(
                token=text(token),
                logprob=float(logprobs[token]),
                top=tuple((text(i), float(logprobs[i])) for i in top),
            ),
        )

    def _text(self, token: int) -> str:
        return self._builder.piece(token).decode("utf-8", errors="replace")


def _sampler_chain(request: GenerationRequest, grammar: Grammar | None, builder: PromptBuilder) -> LlamaSampler:
    """The chain `Llama.generate` builds, per request: penalties, grammar, then greedy at
    temperature 0, else top-k, typical, top-p, min-p, temperature and the seeded draw."""
    model = builder.model
    temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    seed = request.seed if request.seed is not None else random.getrandbits(32)
    chain = LlamaSampler()
    chain.add_penalties(
        n_vocab=model.n_vocab(),
        penalty_last_n=PENALTY_LAST_N,
        penalty_repeat=1.0,
        penalty_freq=request.frequency_penalty or 0.0,
        penalty_present=request.presence_penalty or 0.0,
    )
    if grammar is not None:
        grammar.add_to(chain, builder.vocab, JSON_PARAM)
    if temperature == 0.0:
        chain.add_greedy()
        return chain
    chain.add_top_k(request.top_k or TOP_K)
    chain.add_typical(1.0, 1)
    chain.add_top_p(DEFAULT_TOP_P if request.top_p is None else request.top_p, 1)
    chain.add_min_p(MIN_P, 1)
    chain.add_temp(temperature)
    chain.add_dist(seed & 0xFFFFFFFF)  # llama.cpp seeds are uint32; OpenAI allows int64
    return chain


def _named_call(request: GenerationRequest) -> NamedCall | None:
    if not request.tools or request.tool_choice in ("none", "auto"):
        return None
    if request.tool_choice == "required":
        return NamedCall(request.tools[0].name, next(_call_ids())) if len(request.tools) == 1 else None
    if not any(t.name == request.tool_choice for t in request.tools):
        raise GenerationFailure(
            "invalid", f"tool_choice names {request.tool_choice!r}, which is not in tools", "tool_choice"
        )
    return NamedCall(request.tool_choice, next(_call_ids()))


def _call_ids() -> Iterator[str]:
    while True:
        yield f"call_{random.getrandbits(64):016x}"
