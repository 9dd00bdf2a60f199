"""From a request to the prompt's tokens: the GGUF's chat template (with the tools in the
template's own syntax, or in the system prompt where the template renders none), plain and
fill-in-the-middle completions, and token text. Reads the vocabulary only, so the worker (to
generate) and the gateway's prompt counter (`tokenizer.py`, a vocabulary-only load) build the
very same tokens.

Fill-in-the-middle: with the vocabulary's own FIM tokens where it has them (llama.cpp finds them
from the GGUF's `tokenizer.ggml.fim_*_token_id` keys, or by their text); otherwise, unless the
manifest says `fim: refuse`, emulated: the prefix and suffix go to the chat template as a request
to write what belongs between them (`FIM_INSTRUCTION`), and the gateway marks the answer
`x-konsilium-fim: emulated`.
"""

from __future__ import annotations

from typing import Any, cast

import llama_cpp
from llama_cpp._internals import LlamaModel
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.tool_calls import calls_text, example_turns, system_prompt, template_tools
from model_store.types import GenerationRequest, Message, Role, message_dict, tool_dict

FIM_INSTRUCTION = (
    "You fill in the middle of a file. The user sends the text before the gap, then <FILL>, then "
    "the text after it. Answer with only the text that belongs at <FILL>: no explanation, no code fences."
)
FIM_GAP = "<FILL>"


class PromptBuilder:
    def __init__(self, model: LlamaModel, *, family: str = "", emulate_fim: bool = True) -> None:
        self.model = model
        self.vocab = model.vocab
        metadata = model.metadata()
        template = metadata.get("tokenizer.chat_template")
        self._tools = template_tools(template, family or metadata.get("general.basename", ""))
        self.tool_syntax = self._tools.syntax
        self._emulate_fim = emulate_fim
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
        offered = request.tools if request.tool_choice != "none" else ()
        if self._tools.native:
            return self._chat_tokens(request.messages, [tool_dict(t) for t in offered] or None)
        messages = [self._without_calls(m) for m in request.messages]
        if offered:
            words = system_prompt(self.tool_syntax, offered, required=request.tool_choice == "required")
            answered = any(m.role == "tool" for m in messages)
            turns = example_turns(self.tool_syntax, answered=answered)
            examples = [Message(role=cast(Role, role), content=text) for role, text in turns]
            messages = _with_system(messages, words, examples)
        return self._chat_tokens(tuple(messages), None)

    def single_token(self, text: str) -> int | None:
        """The token `text` is, when it is one (a tool-call marker in the vocabulary)."""
        tokens = self._encode(text, add_bos=False, special=True)
        return tokens[0] if len(tokens) == 1 else None

    def _chat_tokens(self, messages: tuple[Message, ...], tools: list[dict[str, object]] | None) -> list[int]:
        if self._formatter is None:
            raise GenerationFailure("unsupported", "this model has no chat template", "model")
        dicts: Any = [message_dict(m) for m in messages]
        formatted = self._formatter(messages=dicts, tools=cast(Any, tools))
        return self._encode(formatted.prompt, add_bos=not formatted.added_special, special=True)

    def _without_calls(self, message: Message) -> Message:
        """An assistant turn's tool calls as text in the model's syntax, for a template that
        renders only `content`."""
        if not message.tool_calls:
            return message
        text = calls_text(self.tool_syntax, [(c.name, c.arguments) for c in message.tool_calls])
        return Message(role=message.role, content=f"{message.content}{text}", name=message.name)

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
            if not self._emulate_fim:
                raise GenerationFailure("unsupported", "this model has no fill-in-the-middle tokens", "suffix")
            gap = Message(role="user", content=f"{prompt}{FIM_GAP}{suffix}")
            return self._chat_tokens((Message(role="system", content=FIM_INSTRUCTION), gap), None)
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
        """The vocabulary's prefix, suffix and middle tokens, as llama.cpp read them from the GGUF."""
        vocab = self.vocab
        pre, suf, mid = (llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
                         llama_cpp.llama_vocab_fim_mid(vocab))  # fmt: skip
        return (pre, suf, mid) if min(pre, suf, mid) >= 0 else None


def _with_system(messages: list[Message], words: str, examples: list[Message]) -> list[Message]:
    """`words` at the end of the system prompt (a new one when there is none), then `examples`."""
    if messages and messages[0].role == "system":
        first = messages[0]
        system = Message(role="system", content=f"{first.content}\n\n{words}", name=first.name)
        return [system, *examples, *messages[1:]]
    return [Message(role="system", content=words), *examples, *messages]
