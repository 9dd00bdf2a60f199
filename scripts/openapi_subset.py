"""Cut OpenAI's published OpenAPI description down to the schemas Konsilium's tests validate against.

The full spec (github.com/openai/openai-openapi) is ~3 MB of YAML; the tests need
only the chat/completions and embeddings request and response bodies, the model listing and the
error body. This
keeps the `components/schemas` entries reachable by `$ref` from those roots, unchanged, and writes
them as compact JSON with a provenance block, so a fresh clone validates without the full spec.

    python scripts/openapi_subset.py openai-openapi.yaml tests/data/openai/openai-schemas.json \\
        --commit f85dbe223d40e1a31cba812ab2d755c7e98a92a3 --date 2026-08-21
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOTS = (
    "CreateChatCompletionRequest",
    "CreateCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "Response",
    "ResponseStreamEvent",
)
PREFIX = "#/components/schemas/"
SOURCE = "https://github.com/openai/openai-openapi"


def refs_in(node: Any) -> Iterator[str]:
    """Every `$ref` value anywhere below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs_in(item)


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """The named schemas plus everything they reference, transitively, in the spec's order.

    Only `#/components/schemas/...` references can be resolved inside the subset; any other kind
    is an error, since the written file would then validate nothing."""
    kept: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        if name not in schemas:
            raise KeyError(f"schema {name!r} is referenced but not in components/schemas")
        kept.add(name)
        for ref in refs_in(schemas[name]):
            if not ref.startswith(PREFIX):
                raise ValueError(f"{name}: unsupported $ref {ref!r} (only {PREFIX}... can be kept)")
            pending.append(ref.removeprefix(PREFIX))
    return {name: schema for name, schema in schemas.items() if name in kept}


def subset(spec: dict[str, Any], roots: tuple[str, ...], provenance: dict[str, Any]) -> dict[str, Any]:
    schemas = closure(spec["components"]["schemas"], roots)
    info = {
        "title": f"Subset of {spec['info'].get('title', 'the OpenAI API')} (components/schemas only)",
        "spec_version": spec["info"].get("version"),
        "openapi": spec.get("openapi"),
        "roots": list(roots),
        **provenance,
    }
    return {"info": info, "components": {"schemas": schemas}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="the full openapi.yaml")
    parser.add_argument("output", type=Path, help="where to write the JSON subset")
    parser.add_argument("--commit", required=True, help="the openai/openai-openapi commit the spec is from")
    parser.add_argument("--date", required=True, help="that commit's date (YYYY-MM-DD)")
    parser.add_argument("--root", action="append", help="a schema to keep (repeatable; default: the tests' roots)")
    args = parser.parse_args(argv)
    raw = args.spec.read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    provenance = {
        "source": SOURCE,
        "file": args.spec.name,
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "commit": args.commit,
        "date": args.date,
    }
    result = subset(spec, tuple(args.root or ROOTS), provenance)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    args.output.write_text(text + "\n", encoding="utf-8")
    count = len(result["components"]["schemas"])
    print(f"{args.output}: {count} schemas, {len(text.encode()):,} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
