"""From a request to the prompt's tokens: the GGUF's chat template, plain and fill-in-the-middle
completions, and token text. Reads the vocabulary only, so the worker (to generate) and the
gateway's prompt counter (`tokenizer.py`, a vocabulary-only load) build the very same tokens.
"""

from __future__ import annotations

from typing import Any

from llama_cpp._internals import LlamaModel
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from model_store.llama_cpp.failure import GenerationFailure
from model_store.types import GenerationRequest, message_dict, tool_dict

FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


class PromptBuilder:
    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self.vocab = model.vocab
        template = model.metadata().get("tokenizer.chat_template")
        self._formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=self.special_text(model.token_eos()),
                bos_token=self.special_text(model.token_bos()),
            )
            if template
            else None
        )
        self.fim_ids = self._fim_ids()

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if request.kind == "completion":
            return self._completion_tokens(request.prompt, request.suffix)
        if self._formatter is None:
            raise GenerationFailure("unsupported", "this model has no chat template", "model")
        tools: Any = [tool_dict(t) for t in request.tools] if request.tool_choice != "none" else None
        messages: Any = [message_dict(m) for m in request.messages]
        formatted = self._formatter(messages=messages, tools=tools)
        return self._encode(formatted.prompt, add_bos=not formatted.added_special, special=True)

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens write nothing)."""
        return self.model.detokenize([token])

    def special_text(self, token: int) -> str:
        return self.model.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def _encode(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        return list(self.model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def _completion_tokens(self, prompt: str, suffix: str | None) -> list[int]:
        if suffix is None:
            return self._encode(prompt, add_bos=True, special=False) or self._document_start()
        if self.fim_ids is None:
            raise GenerationFailure("unsupported", "this model has no fill-in-the-middle tokens", "suffix")
        pre, suf, mid = self.fim_ids
        body = self._encode(prompt, add_bos=False, special=False)
        return [pre, *body, suf, *self._encode(suffix, add_bos=False, special=False), mid]

    def _document_start(self) -> list[int]:
        """An empty prompt (OpenAI: the model writes "as if from the beginning of a new
        document") starts from the beginning-of-sequence token, else the document separator."""
        start = next((t for t in (self.model.token_bos(), self.model.token_eos()) if t >= 0), None)
        if start is None:
            raise GenerationFailure("invalid", "the prompt is empty and this model has no start token", "prompt")
        return [start]

    def _fim_ids(self) -> tuple[int, int, int] | None:
        ids = [self._encode(text, add_bos=False, special=True) for text in FIM_TOKENS]
        if any(len(tokens) != 1 for tokens in ids):
            return None
        return ids[0][0], ids[1][0], ids[2][0]
