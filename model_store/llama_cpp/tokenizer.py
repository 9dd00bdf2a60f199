"""A model's tokenizer and chat template in the gateway's own process, to count prompts.

`Llama(vocab_only=True)` reads the GGUF's vocabulary and metadata, no weights (SmolLM2: ~0.13 s,
a few MB), and the worker's own `Generator` renders the prompt, so the count is the one the
worker will make. Routing asks only when the estimate says the context could be too small.
"""

from __future__ import annotations

import logging

from model_store.types import GenerationRequest

log = logging.getLogger(__name__)


class PromptCounter:
    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        from model_store.llama_cpp.generation import Generator

        self._generator = Generator(Llama(model_path=path, vocab_only=True, n_ctx=16, verbose=False), logits_all=False)

    def count(self, request: GenerationRequest) -> int | None:
        """The prompt's length in tokens; None when this model cannot render it (no chat
        template, no fill-in-the-middle tokens: the worker refuses it with the reason)."""
        from model_store.llama_cpp.generation import GenerationFailure

        try:
            return len(self._generator.prompt_tokens(request))
        except GenerationFailure:
            return None


def open_counter(path: str) -> PromptCounter | None:
    """Blocking (run it in a thread). A model whose vocabulary cannot be read counts by estimate."""
    try:
        return PromptCounter(path)
    except Exception as exc:  # llama.cpp raises ValueError, OSError, RuntimeError variously
        log.warning("no tokenizer for %s, prompts are estimated: %s", path, exc)
        return None
