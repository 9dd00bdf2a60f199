"""A model's tokenizer and chat template in the gateway's own process, to count prompts.

A vocabulary-only load reads the GGUF's vocabulary and metadata, no weights (SmolLM2: ~0.13 s,
a few MB), and the worker's own `PromptBuilder` renders the prompt, so the count is the one the
worker will make. Routing asks only when the estimate says the context could be too small.
"""

from __future__ import annotations

import logging
import threading

from model_store.llama_cpp.failure import GenerationFailure
from model_store.types import GenerationRequest

log = logging.getLogger(__name__)


class PromptCounter:
    def __init__(self, path: str, family: str = "", emulate_fim: bool = True) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        from model_store.llama_cpp.prompts import PromptBuilder

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = LlamaModel(path_model=path, params=params, verbose=False)
        self._builder = PromptBuilder(model, family=family, emulate_fim=emulate_fim)
        # A text of n bytes is at least n / longest tokens. A token's stored text (byte-level
        # BPE's "Ġ", SentencePiece's "▁", "<0x0A>") is never shorter than the bytes it stands for.
        texts = (llama_cpp.llama_vocab_get_text(model.vocab, t) for t in range(model.n_vocab()))
        self._longest = max((len(text) for text in texts), default=1) or 1
        self._lock = threading.Lock()  # one vocabulary, counted from several threads

    def count(self, request: GenerationRequest, limit: int) -> int | None:
        """The prompt's length in tokens; None when this model cannot render it (no chat
        template, no fill-in-the-middle tokens: the worker refuses it with the reason). A prompt
        that is surely longer than `limit` gets its lower bound instead, without tokenizing (a
        megabyte of messages would take seconds): every message is at least one token of its
        template, and no token is longer than the vocabulary's longest."""
        texts = [request.prompt, request.suffix or "", *(m.content for m in request.messages)]
        floor = max(len(request.messages), sum(len(t.encode("utf-8")) for t in texts) // self._longest)
        if floor > limit:
            return floor
        with self._lock:
            try:
                return len(self._builder.prompt_tokens(request))
            except GenerationFailure:
                return None


def open_counter(path: str, family: str = "", emulate_fim: bool = True) -> PromptCounter | None:
    """Blocking (run it in a thread). A model whose vocabulary cannot be read counts by estimate."""
    try:
        return PromptCounter(path, family, emulate_fim)
    except Exception as exc:  # llama.cpp raises ValueError, OSError, RuntimeError variously
        log.warning("no tokenizer for %s, prompts are estimated: %s", path, exc)
        return None
