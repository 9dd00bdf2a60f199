"""Validate our bodies against OpenAI's published OpenAPI description.

The schemas are the part of OpenAI's spec the tests use, kept in the repo as
`tests/data/openai/openai-schemas.json` (its README says where it is from and how to regenerate
it). The spec is OpenAPI 3.1 (JSON Schema 2020-12) with a few 3.0-style `nullable: true` left in;
they are rewritten to `anyOf [..., null]` so jsonschema checks what OpenAI's SDKs accept.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parent / "data" / "openai" / "openai-schemas.json"


def _denull(node: Any) -> Any:
    if isinstance(node, list):
        return [_denull(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _denull(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("enum"), list):
            node["enum"] = [*node["enum"], None]
        if isinstance(node.get("type"), str) and "$ref" not in node:
            node["type"] = [node["type"], "null"]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _components() -> dict[str, Any]:
    spec = json.loads(SCHEMAS.read_text(encoding="utf-8"))
    components: dict[str, Any] = _denull(spec["components"])
    return components


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": _components()}
    return Draft202012Validator(schema)


def assert_valid(schema_name: str, body: Any) -> None:
    """Raise with every violation listed, so a failure says exactly what is off."""
    errors = sorted(validator(schema_name).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def schemas() -> dict[str, Any]:
    """The in-repo `components/schemas`, `nullable` already rewritten (what the fuzz test draws from)."""
    named: dict[str, Any] = _components()["schemas"]
    return named
