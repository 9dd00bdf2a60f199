"""JSON schemas to llama.cpp grammars, bounded so that no schema can take the worker down.

llama-cpp-python's converter unrolls repetition: `maxLength: n` becomes n nested optional
groups, which llama.cpp's grammar parser descends recursively — 1,000 worked here, 2,000
segfaulted the worker. So the grammar is built from a bounded copy: an upper bound more than
`MAX_UNROLL` above its lower bound is left to `max_tokens` (the grammar stops enforcing it), and
a lower bound or a `pattern` repetition over `MAX_UNROLL` is refused with a 400 naming the field.
A `pattern` with an escape (`\\d`) or without `^…$` anchors is not enforced (the converter cannot
translate it; JSON Schema patterns are unanchored), and every grammar is parsed before use.
The gateway has already checked the schema itself (valid JSON Schema, refs inside, size).
"""

from __future__ import annotations

import json
import re

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from model_store.llama_cpp.failure import GenerationFailure
from model_store.types import ToolSpec

Vocab = object  # llama.cpp's `llama_vocab *` (a ctypes pointer)
MAX_UNROLL = 256
BOUNDS = (("minLength", "maxLength"), ("minItems", "maxItems"))
QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def json_grammar(schema: dict[str, object] | None, param: str, vocab: Vocab) -> LlamaGrammar:
    if schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    bounded = _bounded(schema, param)
    try:
        grammar = LlamaGrammar.from_json_schema(json.dumps(bounded), verbose=False)
    except Exception as exc:  # llama.cpp raises bare exceptions for schemas it cannot compile
        raise GenerationFailure("invalid", f"unsupported JSON schema: {exc}", param) from exc
    return _parsed(grammar, vocab, param)


def tool_call_grammar(tools: tuple[ToolSpec, ...], vocab: Vocab) -> LlamaGrammar:
    """The model picks one of the tools: `{"name": ..., "arguments": {...}}`."""
    return json_grammar({"oneOf": [_call_schema(t) for t in tools]}, "tools", vocab)


def _parsed(grammar: LlamaGrammar, vocab: Vocab, param: str) -> LlamaGrammar:
    """llama.cpp answers a grammar it cannot parse with a null sampler, and llama-cpp-python adds
    that to its sampler chain unchecked: a segfault. The converter writes such grammars for an
    empty `enum`, or a `"` inside an `enum`, a `const` or a property name. So parse it here first."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode())
    if not sampler:
        raise GenerationFailure("invalid", "this JSON schema cannot be compiled into a grammar for this model", param)
    llama_cpp.llama_sampler_free(sampler)
    return grammar


def _call_schema(tool: ToolSpec) -> dict[str, object]:
    arguments = tool.parameters if tool.parameters is not None else {"type": "string"}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments},
        "required": ["name", "arguments"],
    }


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
