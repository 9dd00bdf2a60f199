"""Clients' JSON schemas (tool parameters, response_format) are checked before any backend sees
them: a 400 that names the field, for every schema that is not valid, self-contained and bounded;
and the llama.cpp grammar is built from a copy bounded so that no schema can crash the worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from llama_cpp import Llama

from gateway import convert
from gateway import protocol as p
from gateway.schemas import MAX_DEPTH
from konsilium.errors import InvalidRequestError
from model_store.llama_cpp.failure import GenerationFailure
from model_store.llama_cpp.grammar import MAX_UNROLL, json_grammar
from model_store.types import GenerationRequest
from tests.servers import SMOLLM2

MESSAGES = [{"role": "user", "content": "x"}]


def chat(**fields: Any) -> GenerationRequest:
    body = {"model": "m", "messages": MESSAGES, **fields}
    return convert.chat_request(p.chat_request_decoder.decode(json.dumps(body)))


def tools(*parameters: object) -> list[dict[str, object]]:
    return [{"type": "function", "function": {"name": f"f{i}", "parameters": s}} for i, s in enumerate(parameters)]


def nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


OK = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "objekt"}, "is not valid under any of the given schemas"),
        ({"type": 12}, "is not valid under any of the given schemas"),
        ({"properties": "nope"}, "is not of type 'object'"),
        ({"type": "object", "required": "a"}, "is not of type 'array'"),
        ({"$ref": "#/definitions/missing"}, "$ref '#/definitions/missing' does not resolve inside the schema"),
        ({"$ref": "https://example.com/schema.json"}, "does not resolve inside the schema"),
        (nested(MAX_DEPTH), f"nested deeper than {MAX_DEPTH} levels"),
    ],
)
def test_a_bad_tool_schema_is_a_400_naming_the_tool(schema: object, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chat(tools=tools(OK, schema), tool_choice="auto")
    assert (caught.value.status, caught.value.param) == (400, "tools[1].function.parameters")
    assert fragment in caught.value.message


def test_a_bad_response_format_schema_names_response_format() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(InvalidRequestError) as caught:
        chat(response_format=fmt)
    assert caught.value.param == "response_format.json_schema.schema"


@pytest.mark.parametrize(
    "schema",
    [
        OK,
        {"$defs": {"id": {"type": "integer"}}, "type": "object", "properties": {"id": {"$ref": "#/$defs/id"}}},
        {"definitions": {"a~b/c": {"type": "string"}}, "$ref": "#/definitions/a~0b~1c"},
        {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},  # draft-07 tuples (zod writes these)
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "array",
            "prefixItems": [{"type": "string"}],
        },
        nested(MAX_DEPTH - 2),
    ],
)
def test_valid_schemas_pass_unchanged(schema: dict[str, object]) -> None:
    assert chat(tools=tools(schema)).tools[0].parameters == schema


@pytest.fixture(scope="module")
def vocab() -> Iterator[object]:
    """The real SmolLM2 vocabulary (no weights): grammars are parsed against it."""
    llm = Llama(model_path=str(SMOLLM2), vocab_only=True, n_ctx=16, verbose=False)
    yield llm._model.vocab
    llm.close()


def grammar_text(schema: dict[str, object], vocab: object) -> str:
    text: str = json_grammar(schema, "p", vocab).text
    return text


def test_a_long_upper_bound_is_left_to_max_tokens_not_unrolled(vocab: object) -> None:
    assert grammar_text({"type": "string", "maxLength": MAX_UNROLL}, vocab).count("(") >= MAX_UNROLL
    assert grammar_text({"type": "string", "maxLength": 2000}, vocab).count("(") < 10


@pytest.mark.parametrize("pattern", ["^\\d{4}-\\d{2}$", "[a-z]+", "^x\\.org$"])
def test_a_pattern_the_converter_cannot_translate_is_not_enforced(pattern: str, vocab: object) -> None:
    assert grammar_text({"type": "string", "pattern": pattern}, vocab) == grammar_text({"type": "string"}, vocab)


def test_an_anchored_plain_pattern_is_enforced(vocab: object) -> None:
    assert "[0-9]" in grammar_text({"type": "string", "pattern": "^[0-9]{2,4}$"}, vocab)


@pytest.mark.parametrize(
    "schema",
    [
        {"enum": []},
        {"type": "object", "properties": {'a"b': {"type": "number"}}, "required": ['a"b']},
        {"enum": ['a"b']},
        {"const": 'a"c'},
    ],
)
def test_a_grammar_llama_cpp_cannot_parse_is_a_400_not_a_crash(schema: dict[str, object], vocab: object) -> None:
    """Each of these segfaulted the worker (found by tests/test_fuzz.py)."""
    with pytest.raises(GenerationFailure) as caught:
        json_grammar(schema, "response_format.json_schema.schema", vocab)
    assert (caught.value.kind, caught.value.param) == ("invalid", "response_format.json_schema.schema")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "minItems": 100_000},
        {"type": "string", "minLength": MAX_UNROLL + 1},
        {"type": "string", "pattern": "^a{0,5000}$"},
    ],
)
def test_bounds_a_grammar_cannot_unroll_are_refused(schema: dict[str, object], vocab: object) -> None:
    with pytest.raises(GenerationFailure) as caught:
        json_grammar({"type": "object", "properties": {"a": schema}}, "tools[0].function.parameters", vocab)
    assert (caught.value.kind, caught.value.param) == ("invalid", "tools[0].function.parameters")


@pytest.mark.parametrize("schema", [{"type": "object"}, {"type": "object", "properties": {"a": {"type": "string"}}}])
def test_a_string_holds_no_raw_control_character(schema: dict[str, object], vocab: object) -> None:
    """The converter's own `char` lets a raw newline into a string, and an answer that stops
    there does not parse; llama.cpp's own `json.gbnf` excludes them as this does."""
    rules = dict(line.split(" ::= ", 1) for line in grammar_text(schema, vocab).splitlines() if " ::= " in line)
    assert rules["char"].startswith('[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ')
