"""Between the HTTP request and the router: the facts it reads, and the headers it answers with.

Header values are ASCII: anything else is percent-encoded (`trigger:%D1%83%D1%8F...`); the JSON
explain body carries the readable form.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Request

from konsilium.errors import InvalidRequestError
from konsilium.manifest import Adapter, Manifest
from model_store.backend import Backend
from model_store.store import ModelStore
from model_store.types import GenerationRequest
from routing.policy import RouteDecision, TargetState
from routing.policy import estimate_tokens as prompt_tokens
from routing.roles import RoleDecision
from routing.router import Attempt, Router, is_cloud
from routing.rules import AGENT_ROLES

ROUTED_MODELS = ("auto", "konsilium")
SHORT_ANSWER_TOKENS = 16


def is_routed_model(router: Router, model: str) -> bool:
    """`auto`, a role (`security`, `role:security`) or a configured alias: the router picks."""
    name = model.removeprefix("role:")
    return model in ROUTED_MODELS or name in AGENT_ROLES or name in router.rules.aliases


async def facts(store: ModelStore, generation: GenerationRequest | None = None) -> dict[str, TargetState]:
    """The store's view of each target (a LoRA adapter shares its base's queue and context);
    with a request, its prompt counted by each target's own tokenizer where the estimate puts it
    past half that target's context (else not worth it). Counting is CPU work that grows with
    the prompt, so it runs in a thread: the event loop keeps serving everyone else."""
    estimate = estimate_tokens(generation) if generation is not None else 0
    out, near_limit = {}, []
    for name, entry, adapter in store.addressable():
        m, context = entry.manifest, entry.backend.info.context_length
        if generation is not None and context is not None and estimate * 2 > context:
            near_limit.append((name, entry.backend))
        ready = store.state_of(entry) == "ready"
        out[name] = TargetState(
            model=name,
            tier=m.role,
            resident=ready if adapter is None else store.adapter_resident(entry, adapter),
            cloud=is_cloud(m),
            context_length=context,
            queue_depth=entry.queued + entry.in_flight,
            busy=entry.in_flight >= m.max_concurrency,
            load_ms=None if entry.load_seconds is None else entry.load_seconds * 1000,
        )
    if generation is not None and near_limit:
        counts = await asyncio.to_thread(_count, near_limit, generation)
        out |= {name: msgspec.structs.replace(out[name], prompt_tokens=n) for name, n in counts.items()}
    return out


def _count(backends: list[tuple[str, Backend]], generation: GenerationRequest) -> dict[str, int | None]:
    return {name: backend.count_prompt_tokens(generation) for name, backend in backends}


def estimate_tokens(generation: GenerationRequest) -> int:
    chars = len(generation.prompt) + len(generation.suffix or "")
    chars += sum(len(m.content) + 8 for m in generation.messages)  # + the template's few tokens
    return prompt_tokens(chars)


def short_answer(generation: GenerationRequest) -> bool:
    """A yes/no or classification check: a few tokens, or JSON that can only be a boolean or
    one of a list (micro-tier work)."""
    if generation.max_tokens is not None and generation.max_tokens <= SHORT_ANSWER_TOKENS:
        return True
    schema = generation.json_output.schema if generation.json_output else None
    return schema is not None and (schema.get("type") == "boolean" or "enum" in schema)


def texts(generation: GenerationRequest) -> tuple[str, str]:
    """The last user message (or the prompt) and the system prompt: what triggers read."""
    users = [m.content for m in generation.messages if m.role == "user"]
    system = "\n".join(m.content for m in generation.messages if m.role == "system")
    return (users[-1] if users else generation.prompt), system


def wants(request: Request[Any, Any, Any], ab_fraction: float) -> dict[str, Any]:
    headers = request.headers
    budget = headers.get("x-konsilium-latency-budget-ms")
    try:
        budget_ms = float(budget) if budget is not None else None
    except ValueError as exc:
        raise InvalidRequestError(
            "x-konsilium-latency-budget-ms must be a number", param="x-konsilium-latency-budget-ms"
        ) from exc
    tier = headers.get("x-konsilium-tier")
    if tier is not None and tier not in ("primary", "secondary", "lightweight", "micro", "optional_moe"):
        raise InvalidRequestError(f"unknown tier {tier!r}", param="x-konsilium-tier")
    ab = headers.get("x-konsilium-ab") in ("1", "true") or (ab_fraction > 0 and random.random() < ab_fraction)
    return {"header_role": headers.get("x-konsilium-role"), "latency_budget_ms": budget_ms, "tier": tier, "ab": ab}


def with_defaults(generation: GenerationRequest, defaults: dict[str, float]) -> GenerationRequest:
    missing = {k: v for k, v in defaults.items() if getattr(generation, k) is None}
    return msgspec.structs.replace(generation, **missing) if missing else generation


def route_headers(role: RoleDecision, decision: RouteDecision, target: str, failed: list[Attempt]) -> dict[str, str]:
    reason = decision.reason if not failed else f"{decision.reason};fallback"
    return {
        "x-konsilium-model": target,
        "x-konsilium-role": role.role,
        "x-konsilium-route": _ascii(reason),
        "x-konsilium-fallbacks": ",".join(_ascii(a.target) for a in failed),
        "x-konsilium-matched": ",".join(_ascii(m) for m in role.matched),
    }


def _ascii(text: str) -> str:
    return quote(text, safe=":;/._-~@+=")


def explain(
    role: RoleDecision, decision: RouteDecision, addressable: Mapping[str, tuple[Manifest, Adapter | None]]
) -> dict[str, object]:
    base, adapter = addressable.get(decision.target or "", (None, None))
    return {
        "role": role.role,
        "source": role.source,
        "language": role.language,
        "matched": list(role.matched),
        "target": {"model": base.id if base else decision.target, "adapter": adapter.name if adapter else None},
        "fallbacks": list(decision.fallbacks),
        "skipped": [{"target": s.target, "why": s.why} for s in decision.skipped],
        "reason": decision.reason,
    }
