"""Property-based fuzzing of the two generation front doors through a real server.

Bodies are drawn from OpenAI's own request schemas (`CreateChatCompletionRequest`,
`CreateCompletionRequest`, kept in `tests/data/openai/`) with hypothesis-jsonschema, and about
half of them are then broken on purpose; for chat, a third of the cases are instead a plain
request carrying one drawn JSON schema (`client_schemas`), since whole drawn bodies seldom get past
validation to the grammar compiler. Whatever arrives, the gateway must answer like OpenAI:

- never a 5xx, except 503/504 (a model that cannot answer now), and those with an OpenAI error body;
- every 4xx is `{"error": {"message", "type", "param", "code"}}` (`ErrorResponse`);
- a 200 answer to a plain request is a `CreateChatCompletionResponse` (`CreateCompletionResponse`
  for completions); a 200 stream is `data: ` frames, each one line of JSON, ending in
  `data: [DONE]`, and an error frame in it is OpenAI-shaped and not a server fault (a stream that
  dies of a crashed worker is the 5xx of streams).

Generation is kept cheap, so the real SmolLM2 answers most requests in well under a second:
`model` is forced to the served model nine times in ten (the tenth keeps the drawn name, mostly
a 404 then), `max_tokens` / `max_completion_tokens` are capped at 4 (set to 4 when absent or
null), `n` is set to 1 and `best_of` capped at 1, and `stream` is dropped from half the bodies
that carry it.

Broken bodies (negative cases) start from a drawn body and then: replace one value anywhere with
one of the wrong JSON type, delete a required field or any field, nest a value 64 to 100,000
levels deep, cut the JSON short, or send random bytes instead. A few fixed cases (`EXPLICIT`) run
first on every run: the shapes of bugs found before.

What hypothesis-jsonschema is fed. Given a whole request schema it spends up to half a second per
body re-canonicalising OpenAI's large `allOf`/`oneOf` trees at every draw, so the structure is
walked here instead (`strategy`): `$ref`s are inlined and annotations (description, examples,
`x-*`) dropped; `allOf` parts are merged; `oneOf` is drawn like `anyOf` (any branch, without
checking that the others fail, which only matters where OpenAI's branches overlap); objects with
named properties become `fixed_dictionaries`, with up to two unknown keys of junk added wherever
the spec allows more properties; arrays hold at most three items more than their minimum. Every
leaf (strings, numbers, enums, patterns, free-form objects) goes to hypothesis-jsonschema
unchanged, except the JSON schemas a client hands over (tool parameters, structured output): the
spec types them as any object, so `json_schemas` draws real ones, well-formed and odd, instead.

Bounds: `derandomize=True` (the same cases on every run and in CI, no example database), no
shrinking (each shrink step would be another request to a live model), at most `MAX_EXAMPLES`
cases per test and no new request after `BUDGET_S` seconds once `MIN_CASES` have been sent, so
the two tests stay inside about a minute on two slow cores (a grammar-constrained answer, or a
worker restarted after a crash, takes seconds: the chat test usually ends on the budget).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from tests.openapi import assert_valid, schemas, validator
from tests.servers import MODEL_ID, Server

pytestmark = pytest.mark.e2e

Json = Any
JsonPath = tuple[str | int, ...]

BUDGET_S = 25.0  # per test: no new request after this, once MIN_CASES have been sent
MIN_CASES = 8
MAX_EXAMPLES = 150
REQUEST_TIMEOUT_S = 30.0
MAX_TOKENS = 4
EXTRA_ITEMS = 3
ANNOTATIONS = frozenset({"description", "title", "example", "examples", "default", "deprecated", "discriminator"})
REF_PREFIX = "#/components/schemas/"
ERROR_KEYS = {"message", "type", "param", "code"}
FINE_5XX = {503, 504}
FINE_STREAM_CODES = {"model_unavailable", "model_load_failed", "backend_timeout"}
DEEP_LEVELS = (64, 2_000, 100_000)
WRONG_VALUES: tuple[Json, ...] = (None, True, 0, -1, 2**70, 1.5, 1e308, "", "x", [], [1, "a"], {}, {"x": {"y": 1}})
SENTINEL = "\u0000konsilium-fuzz-deep\u0000"
# Where a client hands over a JSON schema of its own (tool parameters, structured output), OpenAI's
# spec says only "an object"; drawn as such it is almost never a schema. `json_schemas` draws
# real (and odd) ones instead, since those reach the grammar compiler.
CLIENT_SCHEMAS = frozenset({"FunctionParameters", "ResponseFormatJsonSchemaSchema"})
FUZZ_JSON_SCHEMA = "$konsilium-fuzz"
PATTERNS = ("^a+$", "^[0-9]{2,4}$", "^(a|bc)*d$", "^$", "^[^@ ]+@x[.]org$", "^\\d{3}-\\w+$")
FORMATS = ("date-time", "date", "time", "uuid", "email")
ODD_SCHEMAS: tuple[Json, ...] = (
    {"enum": []},
    {"anyOf": []},
    {"type": []},
    {"not": {}},
    False,
    True,
    {"type": "string", "pattern": "["},
    {"type": "string", "pattern": "a{3,1}"},
    {"type": "string", "pattern": "\\p{L}+"},
    {"type": "string", "pattern": "[0-9]+"},
    {"type": "string", "format": "no-such-format"},
    {"type": "string", "minLength": 5, "maxLength": 1},
    {"type": "integer", "minimum": 5, "maximum": 1},
    {"type": "array", "minItems": 5, "maxItems": 1},
    {"type": "object", "properties": {}, "additionalProperties": False, "required": ["a"]},
    {"$ref": "#"},
    {"$ref": "#/nowhere"},
    {"$ref": "https://example.com/schema.json"},
    {"const": "x", "enum": ["y"]},
    {"type": "string", "enum": [1, 2]},
)
HELLO: dict[str, Json] = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS}


# ---- the schema, as strategies -------------------------------------------------------------
def inline(node: Json, seen: tuple[str, ...] = ()) -> Json:
    """`$ref`s replaced by their targets and annotations dropped, so every leaf handed to
    hypothesis-jsonschema is self-contained and small."""
    if isinstance(node, list):
        return [inline(item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Json] = {}
    for key, value in node.items():
        if key in ANNOTATIONS or key.startswith("x-") or key == "$ref":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: inline(sub, seen) for name, sub in value.items()}
        else:
            out[key] = inline(value, seen)
    ref = node.get("$ref")
    if ref is None:
        return out
    name = ref.removeprefix(REF_PREFIX)
    if name in CLIENT_SCHEMAS:
        return {FUZZ_JSON_SCHEMA: name}
    if name in seen:
        raise ValueError(f"{' -> '.join((*seen, name))}: recursive schemas cannot be inlined")
    target = inline(schemas()[name], (*seen, name))
    return {"allOf": [target, out]} if out else target


def _types(node: dict[str, Json]) -> set[str] | None:
    kind = node.get("type")
    return None if kind is None else {kind} if isinstance(kind, str) else set(kind)


def merge(a: dict[str, Json], b: dict[str, Json]) -> dict[str, Json] | None:
    """Both schemas at once, or None where that takes more than unions and intersections."""
    out = dict(a)
    for key, value in b.items():
        if key not in out or out[key] == value:
            out[key] = value
        elif key == "properties":
            out[key] = {
                **out[key],
                **{n: {"allOf": [out[key][n], s]} if n in out[key] else s for n, s in value.items()},
            }
        elif key == "required":
            out[key] = [*out[key], *(name for name in value if name not in out[key])]
        elif key == "allOf":
            out[key] = [*out[key], *value]
        elif key == "type":
            common = (_types(a) or set()) & (_types(b) or set())
            if not common:
                return None
            out[key] = common.pop() if len(common) == 1 else sorted(common)
        elif key in ("minimum", "minLength", "minItems"):
            out[key] = max(out[key], value)
        elif key in ("maximum", "maxLength", "maxItems"):
            out[key] = min(out[key], value)
        else:
            return None
    return out


def strategy(node: Json) -> st.SearchStrategy[Json]:
    """Values of `node` (already inlined): the structure walked here, the leaves drawn by
    hypothesis-jsonschema (see the module docstring for why and what is approximated)."""
    if not isinstance(node, dict):
        return from_schema(node)
    if FUZZ_JSON_SCHEMA in node:
        return json_schemas()
    for keyword in ("oneOf", "anyOf"):
        if keyword in node:
            rest = {key: value for key, value in node.items() if key != keyword}
            return st.one_of([_merged_strategy(rest, branch) for branch in node[keyword]])
    if "allOf" in node:
        merged: dict[str, Json] | None = {key: value for key, value in node.items() if key != "allOf"}
        for part in node["allOf"]:
            merged = merge(merged, part) if merged is not None else None
        return from_schema(node) if merged is None else strategy(merged)
    types = _types(node)
    if types is not None and len(types) > 1:
        return st.one_of([st.none() if t == "null" else strategy({**node, "type": t}) for t in sorted(types)])
    if "properties" in node and "not" not in node:
        return _object_strategy(node)
    if types == {"array"} and isinstance(node.get("items"), dict) and not node.get("uniqueItems"):
        low = node.get("minItems", 0)
        return st.lists(
            strategy(node["items"]), min_size=low, max_size=min(node.get("maxItems", 10**9), low + EXTRA_ITEMS)
        )
    return from_schema(node)


def _merged_strategy(rest: dict[str, Json], branch: Json) -> st.SearchStrategy[Json]:
    if not rest:
        return strategy(branch)
    merged = merge(rest, branch) if isinstance(branch, dict) else None
    return from_schema({"allOf": [rest, branch]}) if merged is None else strategy(merged)


def _object_strategy(node: dict[str, Json]) -> st.SearchStrategy[dict[str, Json]]:
    properties: dict[str, Json] = node["properties"]
    required = [name for name in node.get("required", []) if isinstance(name, str)]
    fixed = st.fixed_dictionaries(
        {name: strategy(properties.get(name, {})) for name in required},
        optional={name: strategy(sub) for name, sub in properties.items() if name not in required},
    )
    extra_schema = node.get("additionalProperties", True)
    if extra_schema is False or "patternProperties" in node:
        return fixed
    values = strategy(extra_schema) if isinstance(extra_schema, dict) and extra_schema else junk()
    keys = st.text(max_size=12).filter(lambda key: key not in properties)
    extras = st.dictionaries(keys, values, max_size=2)
    return st.tuples(fixed, extras).map(lambda pair: {**pair[1], **pair[0]})


def junk() -> st.SearchStrategy[Json]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=6
    )


def json_schemas() -> st.SearchStrategy[Json]:
    """Small JSON schemas a client could send: half well-formed, half with exactly one odd part
    in them (an empty enum, contradictory bounds, a bad pattern or `$ref`, an unsatisfiable object),
    so the odd part is what the gateway and the grammar compiler meet, not some earlier mistake."""
    scalar = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4)
    low, high = st.integers(0, 2), st.integers(2, 5)
    leaves = st.one_of(
        st.just({}),
        st.fixed_dictionaries({"type": st.sampled_from(("string", "integer", "number", "boolean", "null"))}),
        st.fixed_dictionaries({"enum": st.lists(scalar, min_size=1, max_size=3, unique_by=repr)}),
        st.fixed_dictionaries({"const": scalar}),
        st.fixed_dictionaries({"type": st.just("string"), "pattern": st.sampled_from(PATTERNS)}),
        st.fixed_dictionaries({"type": st.just("string"), "format": st.sampled_from(FORMATS)}),
        st.fixed_dictionaries({"type": st.just("string"), "minLength": low, "maxLength": high}),
        st.fixed_dictionaries({"type": st.just("integer"), "minimum": low, "maximum": high}),
    )

    def extend(inner: st.SearchStrategy[Json]) -> st.SearchStrategy[Json]:
        properties = st.dictionaries(st.text(max_size=5), inner, min_size=1, max_size=3)
        objects = properties.flatmap(
            lambda props: st.fixed_dictionaries(
                {
                    "type": st.just("object"),
                    "properties": st.just(props),
                    "required": st.lists(st.sampled_from(sorted(props)), unique=True),
                    "additionalProperties": st.booleans(),
                }
            )
        )
        arrays = st.fixed_dictionaries({"type": st.just("array"), "items": inner, "minItems": low, "maxItems": high})
        combined = st.dictionaries(
            st.sampled_from(("anyOf", "oneOf", "allOf")),
            st.lists(inner, min_size=1, max_size=3),
            min_size=1,
            max_size=1,
        )
        return objects | arrays | combined

    tree = st.recursive(leaves, extend, max_leaves=6)
    referring = tree.map(lambda inner: {"$defs": {"a": inner}, "type": "array", "items": {"$ref": "#/$defs/a"}})
    sane = tree | referring
    odd = st.sampled_from(ODD_SCHEMAS)
    with_odd_part = st.tuples(sane, odd, st.booleans()).map(
        lambda parts: parts[1] if parts[2] else {"type": "object", "properties": {"a": parts[0], "b": parts[1]}}
    )
    return sane | with_odd_part


_STRATEGIES: dict[str, st.SearchStrategy[dict[str, Json]]] = {}


def request_bodies(schema_name: str) -> st.SearchStrategy[dict[str, Json]]:
    if schema_name not in _STRATEGIES:
        _STRATEGIES[schema_name] = strategy(inline({"$ref": REF_PREFIX + schema_name}))
    return _STRATEGIES[schema_name]


# ---- cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    how: str  # "drawn", or the mutation that broke it
    content: bytes
    stream: bool  # whether the body asks for a stream

    def __repr__(self) -> str:
        shown = (
            self.content if len(self.content) <= 1500 else self.content[:1500] + b"...(%d bytes)" % len(self.content)
        )
        return f"Case({self.how}: {shown.decode('utf-8', 'backslashreplace')})"


def encode(body: Json) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")


def as_case(how: str, body: Json) -> Case:
    return Case(how, encode(body), isinstance(body, dict) and body.get("stream") is True)


@st.composite
def cheap(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Json]], token_keys: tuple[str, ...]) -> dict[str, Json]:
    body = draw(bodies)
    if draw(st.integers(0, 9)) < 9:
        body["model"] = MODEL_ID
    for key in token_keys:
        if key in body:
            body[key] = min(body[key], MAX_TOKENS) if type(body[key]) is int else MAX_TOKENS
    if not any(key in body for key in token_keys):
        body[token_keys[0]] = MAX_TOKENS
    if "n" in body:
        body["n"] = 1
    if type(body.get("best_of")) is int:
        body["best_of"] = min(body["best_of"], 1)
    if "stream" in body and draw(st.booleans()):
        del body["stream"]
    return body


def paths(node: Json, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def json_type(value: Json) -> str:
    return "number" if type(value) in (int, float) else type(value).__name__


def parent_of(body: Json, path: JsonPath) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


@st.composite
def broken(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Json]], required: tuple[str, ...]) -> Case:
    body = draw(bodies)
    how = draw(st.sampled_from(("wrong type", "no required field", "no field", "deep", "truncated", "junk bytes")))
    every = list(paths(body))
    if how == "junk bytes":
        return Case(how, draw(st.binary(max_size=64)), stream=False)
    if how == "truncated":
        text = encode(body)
        cut = draw(st.integers(0, len(text) - 1))
        return Case(f"{how} at byte {cut}", text[:cut], stream=False)
    if how == "no required field":
        name = draw(st.sampled_from(required))
        body.pop(name, None)
        return as_case(f"without {name}", body)
    if how == "no field" or (how == "wrong type" and every):
        path = draw(st.sampled_from(every))
        parent, key = parent_of(body, path), path[-1]
        if how == "no field":
            del parent[key]
            return as_case(f"without {_show(path)}", body)
        old = parent[key]
        parent[key] = draw(st.sampled_from([value for value in WRONG_VALUES if json_type(value) != json_type(old)]))
        return as_case(f"{_show(path)} of the wrong type", body)
    path = draw(st.sampled_from([*every, ("fuzz_deep",)]))
    parent_of(body, path)[path[-1]] = SENTINEL
    levels, opener = draw(st.sampled_from(DEEP_LEVELS)), draw(st.sampled_from(("[", '{"a":')))
    nested = (opener * levels + "1" + ("]" if opener == "[" else "}") * levels).encode()
    content = encode(body).replace(encode(SENTINEL), nested)
    return Case(f"{_show(path)} nested {levels} deep", content, isinstance(body, dict) and body.get("stream") is True)


def _show(path: JsonPath) -> str:
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


@st.composite
def client_schemas(draw: st.DrawFn) -> Case:
    """A plain chat request carrying one drawn JSON schema, as a tool's parameters or as the
    structured-output format: drawn whole bodies seldom get that far (something else fails first)."""
    body: dict[str, Json] = {**HELLO, "stream": draw(st.booleans())}
    schema = draw(json_schemas())
    if draw(st.booleans()):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
        return as_case("a drawn response_format schema", body)
    body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    body["tool_choice"] = draw(st.sampled_from(("auto", "required", {"type": "function", "function": {"name": "f"}})))
    return as_case("a drawn tool schema", body)


def cases(
    schema_name: str, token_keys: tuple[str, ...], required: tuple[str, ...], *more: st.SearchStrategy[Case]
) -> st.SearchStrategy[Case]:
    bodies = cheap(request_bodies(schema_name), token_keys)
    return st.one_of(bodies.map(lambda body: as_case("drawn", body)), broken(bodies, required), *more)


# ---- the property --------------------------------------------------------------------------
def check(response: httpx.Response, case: Case, *, answer: str, chunk: str) -> None:
    status = response.status_code
    shown = f"{case!r}\n-> {status} {response.headers.get('content-type')}: {response.text[:2000]}"
    if status >= 500:
        assert status in FINE_5XX, f"a server error:\n{shown}"
        check_error_body(response, shown)
    elif status >= 400:
        check_error_body(response, shown)
    else:
        assert status == 200, f"an unexpected status:\n{shown}"
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")
        assert streamed == case.stream, f"stream={case.stream} answered with another framing:\n{shown}"
        if streamed:
            check_stream(response.text, chunk, shown)
        else:
            try:
                body = response.json()
            except ValueError:
                raise AssertionError(f"not JSON:\n{shown}") from None
            _valid(answer, body, shown)


def check_error_body(response: httpx.Response, shown: str) -> None:
    assert response.headers.get("content-type", "").startswith("application/json"), f"not JSON:\n{shown}"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"not JSON:\n{shown}") from None
    _valid("ErrorResponse", body, shown)
    assert set(body["error"]) == ERROR_KEYS, f"error keys {sorted(body['error'])}:\n{shown}"


def check_stream(text: str, chunk_schema: str, shown: str) -> None:
    assert text.endswith("data: [DONE]\n\n"), f"the stream does not end with [DONE]:\n{shown}"
    data: list[str] = []
    for event in text.split("\n\n")[:-1]:
        lines = event.split("\n")
        if all(line.startswith(":") for line in lines):
            continue  # SSE comments (loading heartbeats)
        one_line = f"a frame that is not one data line: {event!r}\n{shown}"
        assert len(lines) == 1, one_line
        assert lines[0].startswith("data: "), one_line
        data.append(lines[0].removeprefix("data: "))
    assert data.index("[DONE]") == len(data) - 1, f"[DONE] before the end:\n{shown}"
    for index, raw in enumerate(data[:-1]):
        frame = json.loads(raw)
        if "error" not in frame:
            _valid(chunk_schema, frame, shown, stream_chunk=True)
            continue
        assert index == len(data) - 2, f"frames after an error frame:\n{shown}"
        _valid("ErrorResponse", frame, shown)
        error = frame["error"]
        assert error["type"] != "server_error" or error["code"] in FINE_STREAM_CODES, f"the stream failed:\n{shown}"


def _valid(schema_name: str, body: Json, shown: str, *, stream_chunk: bool = False) -> None:
    """`assert_valid`, plus the request in the message. OpenAI's spec says completion chunks have
    the answer's shape, but its own streams (and ours) send `finish_reason: null` until the last."""
    if not stream_chunk or schema_name != "CreateCompletionResponse":
        try:
            assert_valid(schema_name, body)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{shown}") from None
        return
    errors = [
        e
        for e in validator(schema_name).iter_errors(body)
        if not (e.path and e.path[-1] == "finish_reason" and e.instance is None)
    ]
    assert not errors, f"{schema_name}: {[f'{list(e.path)}: {e.message}' for e in errors[:5]]}\n{shown}"


def fuzz(server: Server, path: str, answer: str, chunk: str, generated: st.SearchStrategy[Case]) -> int:
    """Run the property until MAX_EXAMPLES or the budget; returns how many requests were sent."""
    started, state = time.monotonic(), {"sent": 0, "failed": False}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much),
        print_blob=False,
    )
    @given(case=generated)
    def run(case: Case) -> None:
        out_of_time = time.monotonic() - started > BUDGET_S and state["sent"] >= MIN_CASES
        if out_of_time and not state["failed"]:
            return
        state["sent"] += 1
        state["failed"] = True  # until this case passes: hypothesis replays a failure, never skip that
        try:
            response = httpx.post(
                f"{server.v1}{path}",
                content=case.content,
                headers={"content-type": "application/json"},
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.TimeoutException:
            raise AssertionError(f"no answer in {REQUEST_TIMEOUT_S:.0f} s:\n{case!r}") from None
        check(response, case, answer=answer, chunk=chunk)
        state["failed"] = False

    for case in EXPLICIT.get(path, ()):
        run = example(case=case)(run)
    run()
    return int(state["sent"])


# Cases that must hold on every run, whatever is drawn: the shapes of bugs found before.
_BAD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
_EMPTY_ENUM = {"name": "x", "schema": {"type": "object", "properties": {"": {"enum": []}}, "required": [""]}}
_DIGIT = {"type": "object", "properties": {"d": {"type": "string", "pattern": "^\\d$"}}, "required": ["d"]}
_ESCAPED = {"type": "function", "function": {"name": "f", "parameters": _DIGIT}}
_QUOTED = {"name": "x", "schema": {"type": "object", "properties": {'a"b': {"type": "number"}}, "required": ['a"b']}}
_DEEP = b"[" * 100_000 + b"]" * 100_000
EXPLICIT: dict[str, tuple[Case, ...]] = {
    "/chat/completions": (
        Case("messages nested 100000 deep", encode(HELLO).replace(encode(HELLO["messages"]), _DEEP), stream=False),
        as_case("a tool whose parameters are no schema", {**HELLO, "tools": [_BAD_TOOL]}),
        as_case("an empty enum", {**HELLO, "response_format": {"type": "json_schema", "json_schema": _EMPTY_ENUM}}),
        as_case("a pattern with an escape", {**HELLO, "tools": [_ESCAPED], "tool_choice": "required"}),
        as_case(
            "a quote in a property name", {**HELLO, "response_format": {"type": "json_schema", "json_schema": _QUOTED}}
        ),
    ),
    "/completions": (
        as_case("an empty prompt", {"model": MODEL_ID, "prompt": "", "max_tokens": MAX_TOKENS}),
        as_case(
            "an empty prompt, streamed", {"model": MODEL_ID, "prompt": "", "max_tokens": MAX_TOKENS, "stream": True}
        ),
    ),
}


def test_chat_completions_answer_every_body_like_openai(server: Server) -> None:
    token_keys, required = ("max_tokens", "max_completion_tokens"), ("model", "messages")
    generated = cases("CreateChatCompletionRequest", token_keys, required, client_schemas())
    sent = fuzz(
        server, "/chat/completions", "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", generated
    )
    assert sent >= MIN_CASES


def test_completions_answer_every_body_like_openai(server: Server) -> None:
    generated = cases("CreateCompletionRequest", ("max_tokens",), ("model", "prompt"))
    sent = fuzz(server, "/completions", "CreateCompletionResponse", "CreateCompletionResponse", generated)
    assert sent >= MIN_CASES
