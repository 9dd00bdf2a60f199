"""Between HTTP and the dispatcher: the `RouteRequest` a request's headers ask for, and the
headers and explain body its decision answers with.

Header values are ASCII: anything else is percent-encoded (`trigger:%D1%83%D1%8F...`); the JSON
explain body carries the readable form.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from urllib.parse import quote

from konsilium.errors import InvalidRequestError
from konsilium.manifest import Adapter, Manifest
from routing.dispatch import Dispatched
from routing.policy import CONSENT_HEADER, RouteDecision
from routing.requests import Access, RouteRequest
from routing.roles import RoleDecision
from routing.router import TIER_ORDER


def route_request(
    headers: Mapping[str, str], model: str, ab_fraction: float, access: Access | None = None
) -> RouteRequest:
    budget = headers.get("x-konsilium-latency-budget-ms")
    try:
        budget_ms = float(budget) if budget is not None else None
    except ValueError as exc:
        raise InvalidRequestError(
            "x-konsilium-latency-budget-ms must be a number", param="x-konsilium-latency-budget-ms"
        ) from exc
    tier = headers.get("x-konsilium-tier")
    if tier is not None and tier not in TIER_ORDER:
        raise InvalidRequestError(f"unknown tier {tier!r}", param="x-konsilium-tier")
    ab = _flag(headers, "x-konsilium-ab") or (ab_fraction > 0 and random.random() < ab_fraction)
    return RouteRequest(
        model=model,
        role=headers.get("x-konsilium-role"),
        latency_budget_ms=budget_ms,
        tier=tier,
        ab=ab,
        cloud_consent=_flag(headers, CONSENT_HEADER),
        access=access,
    )


def _flag(headers: Mapping[str, str], name: str) -> bool:
    return headers.get(name, "").strip().lower() in ("1", "true", "yes")


def route_headers(dispatched: Dispatched) -> dict[str, str]:
    role, failed = dispatched.role, dispatched.failed
    reason = dispatched.decision.reason if not failed else f"{dispatched.decision.reason};fallback"
    return {
        "x-konsilium-model": dispatched.target,
        "x-konsilium-role": role.role,
        "x-konsilium-route": _ascii(reason),
        "x-konsilium-fallbacks": ",".join(_ascii(a.target) for a in failed),
        "x-konsilium-matched": ",".join(_ascii(m) for m in role.matched),
        "x-konsilium-role-source": role.source,  # the layer that decided: header, alias, trigger, classifier, ...
        "x-konsilium-role-margin": f"{role.margin:g}",
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
        "margin": role.margin,
        "language": role.language,
        "matched": list(role.matched),
        "target": {"model": base.id if base else decision.target, "adapter": adapter.name if adapter else None},
        "fallbacks": list(decision.fallbacks),
        "skipped": [{"target": s.target, "why": s.why} for s in decision.skipped],
        "reason": decision.reason,
    }
