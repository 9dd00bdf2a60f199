"""One request in a slot of a llama.cpp worker: its prompt, its sampler chain (penalties,
grammar, top-k/p, temperature, seed) and what each sampled token becomes — text held back only
while it could still become a stop sequence, tool-call pieces, logprobs, exact token counts.

The scheduler (`batch.py`) decodes many jobs in one batch and pushes each job its token; the job
never buffers a whole answer, and a cancelled job is simply dropped between two tokens. This
module runs only in the worker process.
"""

from __future__ import annotations

import codecs
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import llama_cpp
import numpy
from llama_cpp._internals import LlamaModel, LlamaSampler
from llama_cpp.llama_grammar import LlamaGrammar

from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.grammar import json_grammar, tool_call_grammar
from model_store.llama_cpp.prompts import PromptBuilder
from model_store.llama_cpp.stops import StopMatcher
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

Logits = Callable[[], "numpy.ndarray[tuple[int], numpy.dtype[numpy.float32]]"]


@dataclass(frozen=True)
class ToolMode:
    """How the output is shaped into a tool call; `name` None means the model picks (buffered)."""

    name: str | None
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
        self._tool = _tool_mode(request)
        self.sampler = _sampler_chain(request, _grammar(request, self._tool, builder.vocab), builder.model)
        self._builder = builder
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(request.stop)
        self._produced = 0
        self._pieces: list[str] = []
        self.finished = False
        self.cached = 0  # prompt tokens the slot's KV cache already held (set when it is placed)

    def close(self) -> None:
        self.sampler.close()

    def opening(self) -> list[Event]:
        tool = self._tool
        if tool is not None and tool.name is not None:
            return [ToolCallDelta(index=0, id=tool.call_id, name=tool.name, arguments="")]
        return []

    def feed(self, token: int, logits: Logits) -> list[Event]:
        """The events of one sampled token; the last list ends with `Finish`. `logits` reads the
        row the token was sampled from (only for logprobs; valid until the next decode)."""
        if llama_cpp.llama_vocab_is_eog(self._builder.vocab, token):
            return self._finish("stop")
        self._produced += 1
        text, hit = self._stops.feed(self._decoder.decode(self._builder.piece(token)))
        events = self._text_events(text, self._logprobs(token, logits)) if text else []
        if hit:
            return events + self._finish("stop")
        if self._produced >= self._max_tokens:
            return events + self._finish("length")
        return events

    def _finish(self, reason: FinishReason) -> list[Event]:
        self.finished = True
        tail = "" if self._stops.hit else self._stops.flush(self._decoder.decode(b"", final=True))
        events = self._text_events(tail, ()) if tail else []
        if self._tool is not None:
            events.extend(_finish_tool_call(self._tool, "".join(self._pieces)))
            reason = "tool_calls"
        usage = Usage(prompt_tokens=len(self.prompt), completion_tokens=self._produced, cached_tokens=self.cached)
        return [*events, Finish(reason=reason, usage=usage)]

    def _text_events(self, text: str, logprobs: tuple[TokenLogprob, ...]) -> list[Event]:
        self._pieces.append(text)
        if self._tool is None:
            return [TextDelta(text=text, logprobs=logprobs)]
        return [ToolCallDelta(index=0, arguments=text)] if self._tool.name is not None else []

    def _logprobs(self, token: int, logits: Logits) -> tuple[TokenLogprob, ...]:
        if self.request.top_logprobs is None or self._tool is not None:  # tool calls carry none
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


def _sampler_chain(request: GenerationRequest, grammar: LlamaGrammar | None, model: LlamaModel) -> LlamaSampler:
    """The chain `Llama.generate` builds, per request: penalties, grammar, then greedy at
    temperature 0, else top-k, typical, top-p, min-p, temperature and the seeded draw."""
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
        chain.add_grammar(model, grammar)
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


def _tool_mode(request: GenerationRequest) -> ToolMode | None:
    if not request.tools or request.tool_choice in ("none", "auto"):
        return None
    call_id = f"call_{random.getrandbits(64):016x}"
    if request.tool_choice == "required":
        only = request.tools[0].name if len(request.tools) == 1 else None
        return ToolMode(name=only, call_id=call_id)
    if not any(t.name == request.tool_choice for t in request.tools):
        raise GenerationFailure(
            "invalid", f"tool_choice names {request.tool_choice!r}, which is not in tools", "tool_choice"
        )
    return ToolMode(name=request.tool_choice, call_id=call_id)


def _grammar(request: GenerationRequest, tool: ToolMode | None, vocab: object) -> LlamaGrammar | None:
    if tool is None:
        json_output = request.json_output
        param = "response_format.json_schema.schema"
        return json_grammar(json_output.schema, param, vocab) if json_output else None
    if tool.name is None:
        return tool_call_grammar(request.tools, vocab)
    index = next(i for i, t in enumerate(request.tools) if t.name == tool.name)
    parameters = request.tools[index].parameters
    param = f"tools[{index}].function.parameters"
    return json_grammar(parameters, param, vocab) if parameters is not None else None


def _finish_tool_call(tool: ToolMode, text: str) -> Iterator[Event]:
    """Named calls streamed their arguments already; a model-picked call is parsed at the end."""
    if tool.name is not None:
        return
    try:
        call = json.loads(text)
        name, arguments = str(call["name"]), call["arguments"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GenerationFailure("internal", f"model produced no valid tool call: {exc}") from exc
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    yield ToolCallDelta(index=0, id=tool.call_id, name=name, arguments=encoded)
