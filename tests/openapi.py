"""Validate our bodies against OpenAI's published OpenAPI description (shared/reference).

The spec is OpenAPI 3.1 (JSON Schema 2020-12) with a few 3.0-style `nullable: true` left in; they
are rewritten to `anyOf [..., null]` so jsonschema checks what OpenAI's SDKs accept.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-openapi.yaml"


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
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
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
