"""JSON schemas a client sends (`response_format`, tool `parameters`), checked before any backend
sees them.

A schema must be a valid JSON Schema (the draft its `$schema` names, else Draft 7, the one most
clients write), every `$ref` in it must point inside it, and its nesting and size are bounded.
The bounds are checked without recursion, before the validator (which recurses) reads it: a
body that msgspec parsed can be nested ~900 levels deep. A local model compiles the schema into
a grammar, so an invalid or unresolvable schema that slipped through would fail there, where the
field can no longer be named — or, worse, crash the worker.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import msgspec
from jsonschema import Draft4Validator, Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

from konsilium.errors import InvalidRequestError

MAX_DEPTH = 64  # nested objects and arrays within one schema
MAX_NODES = 10_000  # objects, arrays and values in one schema
DRAFTS: Mapping[str, type[Validator]] = {
    v.META_SCHEMA["$schema"].rstrip("#"): v
    for v in (Draft4Validator, Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator)
}
_encoder = msgspec.json.Encoder(order="deterministic")


def check_schema(schema: object, param: str) -> None:
    """Raise a 400 naming `param` unless `schema` is a bounded, valid, self-contained JSON Schema."""
    if not isinstance(schema, dict | bool):
        raise InvalidRequestError("a JSON schema must be an object", param=param)
    _check_bounds(schema, param)
    problem = _problem(_encoder.encode(schema))
    if problem is not None:
        raise InvalidRequestError(f"Invalid JSON schema: {problem}", param=param)


def _check_bounds(schema: object, param: str) -> None:
    nodes = 0
    stack: list[tuple[object, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            limit = f"nested deeper than {MAX_DEPTH} levels" if depth > MAX_DEPTH else f"over {MAX_NODES} nodes"
            raise InvalidRequestError(f"Invalid JSON schema: it is {limit}", param=param)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


@functools.lru_cache(maxsize=256)  # clients send the same tools with every request
def _problem(encoded: bytes) -> str | None:
    schema = msgspec.json.decode(encoded)
    declared = schema.get("$schema", "") if isinstance(schema, dict) else ""
    draft = DRAFTS.get(str(declared).rstrip("#"), Draft7Validator)
    try:
        draft.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        return exc.message + (f" (at {where.lstrip('.')})" if where else "")
    return next((f"$ref {ref!r} does not resolve inside the schema" for ref in _refs(schema)
                 if not _resolves(schema, ref)), None)  # fmt: skip


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            ref = current.get("$ref")
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return found


def _resolves(root: Any, ref: str) -> bool:
    """Only references into this document (`#`, `#/$defs/x`): nothing is ever fetched."""
    if not ref.startswith("#"):
        return False
    node = root
    for raw in ref[1:].split("/")[1:]:
        key = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True
