"""JSON schemas to llama.cpp grammars, bounded so that no schema can take the worker down.

llama-cpp-python's converter unrolls repetition: `maxLength: n` becomes n nested optional
groups, which llama.cpp's grammar parser descends recursively — 1,000 worked here, 2,000
segfaulted the worker. So the grammar is built from a bounded copy: an upper bound more than
`MAX_UNROLL` above its lower bound is left to `max_tokens` (the grammar stops enforcing it), and
a lower bound or a `pattern` repetition over `MAX_UNROLL` is refused with a 400 naming the field.
A `pattern` with an escape (`\\d`) or without `^…$` anchors is not enforced (the converter cannot
translate it; JSON Schema patterns are unanchored), and every grammar is parsed before use.
The gateway has already checked the schema itself (valid JSON Schema, refs inside, size).

Whitespace is bounded everywhere: one optional space between tokens (the converter's rule, and
`JSON_OBJECT` for `json_object`), so a small model cannot spend its `max_tokens` on newlines and
indentation. Tool calls in auto mode take a lazy grammar (`tool_calls_grammar`): free text until
the model writes its family's trigger, then only well-formed calls of the given tools.
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass
from typing import Any, cast

import llama_cpp
from llama_cpp._internals import LlamaSampler
from llama_cpp.llama_cpp import llama_sampler_p_ctypes, llama_token, llama_vocab_p_ctypes
from llama_cpp.llama_grammar import SchemaConverter

from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.tool_calls import ToolSyntax
from model_store.types import ToolSpec

Vocab = object  # llama.cpp's `llama_vocab *` (a ctypes pointer)
MAX_UNROLL = 256
BOUNDS = (("minLength", "maxLength"), ("minItems", "maxItems"))
QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")
JSON_OBJECT: dict[str, object] = {"type": "object"}  # json_object: any object, spaced as schemas are
# A string's character as JSON has it. The converter's own (`[^"\\]`) lets a raw newline or
# another control character into a string: an answer that stops there does not parse.
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar for one request's sampler chain; `lazy`: it applies from the first match
    of a trigger pattern (fed the text from the pattern's first group) or trigger token on."""

    text: str
    lazy_patterns: tuple[str, ...] = ()
    lazy_tokens: tuple[int, ...] = ()

    def add_to(self, chain: LlamaSampler, vocab: Vocab, param: str) -> None:
        llama_cpp.llama_sampler_chain_add(chain.sampler, self._sampler(vocab, param))  # the chain owns it

    def check(self, vocab: Vocab, param: str) -> Grammar:
        """llama.cpp answers a grammar it cannot parse with a null sampler, and a null sampler in
        a chain is a segfault. The converter writes such grammars for an empty `enum`, or a `"`
        inside an `enum`, a `const` or a property name. So each is parsed once before use."""
        llama_cpp.llama_sampler_free(self._sampler(vocab, param))
        return self

    def _sampler(self, vocab: Vocab, param: str) -> Any:
        """A new sampler: llama.cpp's pointer, never null (a grammar that does not parse is a 400)."""
        text, root = self.text.encode(), b"root"
        if not self.lazy_patterns and not self.lazy_tokens:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, text, root)
        else:
            patterns = (ctypes.c_char_p * len(self.lazy_patterns))(*(p.encode() for p in self.lazy_patterns))
            tokens = (llama_token * len(self.lazy_tokens))(*self.lazy_tokens)
            sampler = _init_grammar_lazy_patterns(vocab, text, root, patterns, len(patterns), tokens, len(tokens))
        if not sampler:
            raise GenerationFailure(
                "invalid", "this JSON schema cannot be compiled into a grammar for this model", param
            )
        return sampler


# llama.cpp's lazy grammar, which llama-cpp-python 0.3's `LlamaSampler` calls but does not bind
_init_grammar_lazy_patterns = llama_cpp.llama_cpp._lib.llama_sampler_init_grammar_lazy_patterns
_init_grammar_lazy_patterns.argtypes = [
    llama_vocab_p_ctypes,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.c_size_t,
    ctypes.POINTER(llama_token),
    ctypes.c_size_t,
]
_init_grammar_lazy_patterns.restype = llama_sampler_p_ctypes


def json_grammar(schema: dict[str, object] | None, param: str, vocab: Vocab) -> Grammar:
    converter = _converter()
    _visit(converter, schema if schema is not None else JSON_OBJECT, "", param)
    return Grammar(_text(converter)).check(vocab, param)


def tool_calls_grammar(
    syntax: ToolSyntax,
    tools: tuple[ToolSpec, ...],
    *,
    parallel: bool,
    lazy: bool,
    trigger_token: int | None,
    vocab: Vocab,
) -> Grammar:
    """The calls of `syntax` for `tools`: the trigger, then one call (or several, when `parallel`
    and the syntax can carry them), then nothing but the end of the answer. Each call is
    `{"name": "<a tool>", "<arguments key>": <that tool's parameters>}`, name first, so the
    reader can announce the call before its arguments. `lazy`: free text may come first."""
    converter = _converter()
    calls = []
    for index, tool in enumerate(tools):
        param = f"tools[{index}].function.parameters"
        schema: dict[str, object] = tool.parameters if tool.parameters is not None else {"type": "string"}
        arguments = _visit(converter, schema, f"tool-{index}-arguments", param)
        name = _literal(json.dumps(tool.name))
        key = _literal(json.dumps(syntax.arguments_key))
        calls.append(
            converter._add_rule(
                f"tool-{index}-call",
                f'"{{" space {_literal(json.dumps("name"))} space ":" space {name} space "," space '
                f'{key} space ":" space {arguments} space "}}"',
            )
        )
    converter._add_rule("call", " | ".join(calls))
    many = parallel and syntax.parallel
    trigger, close, nl = _literal(syntax.trigger), _literal(syntax.close) if syntax.close else "", '"\\n"?'
    if syntax.listed:
        rest = '("," space call)*' if many else ""
        root = f'{trigger} space "[" space call {rest} space "]" {nl} {close}'
    elif syntax.at_start:
        root = "call"  # the trigger is the call's own opening
    else:
        one = f"{trigger} {nl} space call {nl} {close}"
        root = f"{one} ({nl} {one})*" if many else one
    converter._add_rule("root", root)
    text = _text(converter)
    if not lazy:
        return Grammar(text).check(vocab, "tools")
    escaped = re.escape(syntax.trigger)
    pattern = rf"\s*({escaped})[\s\S]*" if syntax.at_start else rf"[\s\S]*?({escaped})[\s\S]*"
    tokens = (trigger_token,) if trigger_token is not None else ()
    return Grammar(text, lazy_patterns=(pattern,), lazy_tokens=tokens).check(vocab, "tools")


def _text(converter: SchemaConverter) -> str:
    """The grammar, with JSON's own string character (no raw control characters)."""
    rules: dict[str, str] = converter._rules
    if "char" in rules:
        rules["char"] = JSON_CHAR
    return str(converter.format_grammar())


def _converter() -> SchemaConverter:
    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _visit(converter: SchemaConverter, schema: dict[str, object], name: str, param: str) -> str:
    """The rule `name` for `schema` (bounded first); what the converter cannot take is a 400."""
    bounded = cast(dict[str, object], _bounded(schema, param))
    try:
        return str(converter.visit(converter.resolve_refs(bounded, "request"), name))
    except Exception as exc:  # llama.cpp's converter raises bare exceptions for what it cannot compile
        raise GenerationFailure("invalid", f"unsupported JSON schema: {exc}", param) from exc


def _literal(text: str) -> str:
    """`text` as a GBNF string literal (JSON's escapes are GBNF's)."""
    return json.dumps(text)


def _bounded(node: object, param: str) -> object:
    if isinstance(node, list):
        return [_bounded(item, param) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _bounded(value, param) for key, value in node.items()}
    for low_key, high_key in BOUNDS:
        low, high = out.get(low_key), out.get(high_key)
        low = low if isinstance(low, int) else 0
        if low > MAX_UNROLL:
            message = f"{low_key} {low} is over {MAX_UNROLL}, the most a grammar unrolls"
            raise GenerationFailure("invalid", message, param)
        if isinstance(high, int) and high - low > MAX_UNROLL:
            del out[high_key]  # enforced by max_tokens instead of n nested grammar groups
    pattern = out.get("pattern")
    if isinstance(pattern, str):
        if "\\" in pattern or not (pattern.startswith("^") and pattern.endswith("$")):
            del out["pattern"]  # the converter knows neither escapes nor unanchored patterns
        elif any(int(n) > MAX_UNROLL for match in QUANTIFIER.finditer(pattern) for n in match.groups() if n):
            raise GenerationFailure("invalid", f"a repetition in `pattern` is over {MAX_UNROLL}", param)
    return out
