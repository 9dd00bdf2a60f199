"""Token generation inside a llama.cpp worker: prompt building, stops, tools, JSON, logprobs.

Our own loop over `Llama.generate()` rather than `create_chat_completion()`: it yields after
every token (so a cancel lands within one token), counts tokens exactly, holds back only the
text that could still become a stop sequence, and never buffers a whole answer. This module
runs only in the worker process.
"""

from __future__ import annotations

import codecs
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.grammar import json_grammar, tool_call_grammar
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
    message_dict,
    tool_dict,
)

FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
DEFAULT_TEMPERATURE = 0.8  # llama.cpp's defaults, used when the client leaves them out
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True)
class ToolMode:
    """How the output is shaped into a tool call; `name` None means the model picks (buffered)."""

    name: str | None
    call_id: str


class Generator:
    def __init__(self, llm: llama_cpp.Llama, *, logits_all: bool) -> None:
        self._llm = llm
        self._logits_all = logits_all
        self._vocab = llm._model.vocab
        template = llm.metadata.get("tokenizer.chat_template")
        self._formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llm, llm.token_eos()),
                bos_token=_token_text(llm, llm.token_bos()),
            )
            if template
            else None
        )
        self.fim_ids = _fim_ids(llm)

    @property
    def n_ctx(self) -> int:
        return int(self._llm.n_ctx())

    def run(self, request: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[Event]:
        prompt = self.prompt_tokens(request)
        room = self.n_ctx - len(prompt)
        if room < 1:
            raise GenerationFailure(
                "context_length",
                f"This model's maximum context length is {self.n_ctx} tokens; the prompt has "
                f"{len(prompt)} tokens. Shorten the prompt.",
                "messages" if request.kind == "chat" else "prompt",
            )
        # Clients (Continue: 4096 by default) ask for more than is left; like llama.cpp we clamp
        # to the room left instead of refusing every long conversation.
        max_tokens = min(request.max_tokens or room, room)
        if request.top_logprobs is not None and not self._logits_all:
            raise GenerationFailure(
                "unsupported", "logprobs need `logits_all: true` in this model's config", "logprobs"
            )
        tool = _tool_mode(request)
        grammar = _grammar(request, tool, self._vocab)
        seed = request.seed if request.seed is not None else random.getrandbits(32)
        self._llm.set_seed(seed & 0xFFFFFFFF)  # llama.cpp seeds are uint32; OpenAI allows int64
        tokens = self._llm.generate(
            prompt,
            grammar=grammar,
            temp=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
        )
        if tool is not None and tool.name is not None:
            yield ToolCallDelta(index=0, id=tool.call_id, name=tool.name, arguments="")
        yield from self._stream(request, tokens, len(prompt), max_tokens, tool, cancelled)

    def _stream(
        self,
        request: GenerationRequest,
        tokens: Iterator[int],
        n_prompt: int,
        max_tokens: int,
        tool: ToolMode | None,
        cancelled: Callable[[], bool],
    ) -> Iterator[Event]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(request.stop)
        produced = 0
        reason: FinishReason = "length"
        pieces: list[str] = []
        for token in tokens:
            if cancelled():
                return
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            produced += 1
            text, hit = stops.feed(decoder.decode(self._llm.detokenize([token])))
            if text:
                pieces.append(text)
                yield from self._text_events(text, tool, token, request)
            if hit:
                reason = "stop"
                break
            if produced >= max_tokens:
                break
        tail = "" if stops.hit else stops.flush(decoder.decode(b"", final=True))
        if tail:
            pieces.append(tail)
            yield from self._text_events(tail, tool, None, request)
        if tool is not None:
            yield from _finish_tool_call(tool, "".join(pieces))
            reason = "tool_calls"
        yield Finish(reason=reason, usage=Usage(prompt_tokens=n_prompt, completion_tokens=produced))

    def _text_events(
        self, text: str, tool: ToolMode | None, token: int | None, request: GenerationRequest
    ) -> Iterator[Event]:
        if tool is None:
            yield TextDelta(text=text, logprobs=self._logprobs(token, request))
        elif tool.name is not None:
            yield ToolCallDelta(index=0, arguments=text)

    def _logprobs(self, token: int | None, request: GenerationRequest) -> tuple[TokenLogprob, ...]:
        if request.top_logprobs is None or token is None:
            return ()
        row = self._llm.scores[self._llm.n_tokens - 1]
        logprobs = llama_cpp.Llama.logits_to_logprobs(row)
        top = [int(i) for i in numpy.argsort(-logprobs)[: request.top_logprobs]]
        return (
            TokenLogprob(
                token=_piece(self._llm, token),
                logprob=float(logprobs[token]),
                top=tuple((_piece(self._llm, i), float(logprobs[i])) for i in top),
            ),
        )

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if request.kind == "completion":
            return self._completion_tokens(request.prompt, request.suffix)
        if self._formatter is None:
            raise GenerationFailure("unsupported", "this model has no chat template", "model")
        tools: Any = [tool_dict(t) for t in request.tools] if request.tool_choice != "none" else None
        messages: Any = [message_dict(m) for m in request.messages]
        formatted = self._formatter(messages=messages, tools=tools)
        return list(
            self._llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
        )

    def _completion_tokens(self, prompt: str, suffix: str | None) -> list[int]:
        encode = self._llm.tokenize
        if suffix is None:
            return list(encode(prompt.encode("utf-8"), add_bos=True, special=False)) or self._document_start()
        if self.fim_ids is None:
            raise GenerationFailure("unsupported", "this model has no fill-in-the-middle tokens", "suffix")
        pre, suf, mid = self.fim_ids
        return [
            pre,
            *encode(prompt.encode("utf-8"), add_bos=False, special=False),
            suf,
            *encode(suffix.encode("utf-8"), add_bos=False, special=False),
            mid,
        ]

    def _document_start(self) -> list[int]:
        """An empty prompt (OpenAI: the model writes "as if from the beginning of a new
        document") starts from the beginning-of-sequence token, else the document separator."""
        start = next((t for t in (self._llm.token_bos(), self._llm.token_eos()) if t >= 0), None)
        if start is None:
            raise GenerationFailure("invalid", "the prompt is empty and this model has no start token", "prompt")
        return [start]


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


def _token_text(llm: llama_cpp.Llama, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""


def _piece(llm: llama_cpp.Llama, token: int) -> str:
    return llm.detokenize([token]).decode("utf-8", errors="replace")


def _fim_ids(llm: llama_cpp.Llama) -> tuple[int, int, int] | None:
    ids = []
    for text in FIM_TOKENS:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(tokens) != 1:
            return None
        ids.append(tokens[0])
    return ids[0], ids[1], ids[2]
