"""What a request brings to routing, as plain data: never the HTTP request itself.

`RouteRequest` is what the front door parsed from the HTTP layer (headers, the `model` field,
who is calling); `Prompt` is what routing reads of the `GenerationRequest` (the texts triggers
look at, the size estimate, the answer's expected length). The council and the tenancy keys
fill the same structs, with no Litestar request in sight.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from model_store.types import GenerationRequest
from routing.policy import estimate_tokens

SHORT_ANSWER_TOKENS = 16


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """What an API key may use: its models (empty: every model) and its tenant's adapters.

    An adapter that names `tenants` in its manifest belongs to them: only their keys see it. One
    that names none is shared. `models` may name a model (then its shared adapters too) or an
    adapter; either way a tenant's adapter stays its tenant's."""

    key: str  # the key's name (logs, metrics)
    tenant: str | None = None
    models: frozenset[str] = frozenset()

    def permits(self, name: str, base: str, tenants: Sequence[str]) -> bool:
        """`name`: a model (`base` is itself) or an adapter on `base` with its `tenants`."""
        if tenants and self.tenant not in tenants:
            return False
        return not self.models or name in self.models or base in self.models


class RouteRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str  # the request's `model`: a model, an adapter, `auto`, a role or an alias
    role: str | None = None  # the `x-konsilium-role` header
    latency_budget_ms: float | None = None
    tier: str | None = None
    ab: bool = False
    access: Access | None = None  # what the caller's API key may use; None: keys are off, anything
    cloud_consent: bool = False  # the caller allows a cloud target (`x-konsilium-cloud-consent: 1`)
    local_only: bool = False  # a council agent: never a cloud target, whatever the consent


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    user_text: str  # the last user message, or the completion prompt: what triggers read first
    system_text: str
    estimated_tokens: int  # before any tokenizer (3 characters a token)
    max_tokens: int | None
    short_answer: bool  # a yes/no or classification check (micro-tier work)
    fill_in_middle: bool = False  # a completion with a `suffix`: a model with FIM tokens first


def prompt_of(generation: GenerationRequest) -> Prompt:
    users = [m.content for m in generation.messages if m.role == "user"]
    return Prompt(
        user_text=users[-1] if users else generation.prompt,
        system_text="\n".join(m.content for m in generation.messages if m.role == "system"),
        estimated_tokens=estimated_tokens(generation),
        max_tokens=generation.max_tokens,
        short_answer=short_answer(generation),
        fill_in_middle=generation.suffix is not None,
    )


def estimated_tokens(generation: GenerationRequest) -> int:
    chars = len(generation.prompt) + len(generation.suffix or "")
    chars += sum(len(m.content) + 8 for m in generation.messages)  # + the template's few tokens
    return estimate_tokens(chars)


def short_answer(generation: GenerationRequest) -> bool:
    """A few tokens, or JSON that can only be a boolean or one of a list."""
    if generation.max_tokens is not None and generation.max_tokens <= SHORT_ANSWER_TOKENS:
        return True
    schema = generation.json_output.schema if generation.json_output else None
    return schema is not None and (schema.get("type") == "boolean" or "enum" in schema)
