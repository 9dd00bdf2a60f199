"""`choose_route`: pure policy, plain data in, plain data out (no I/O, clock or logging).

Today a request names its model and gets exactly that model; the routing issue adds agent roles,
triggers, latency and fallback chains behind this same signature.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from konsilium.errors import ModelNotFoundError


class RouteInput(msgspec.Struct, frozen=True):
    model: str


class RouteDecision(msgspec.Struct, frozen=True):
    target: str
    fallbacks: tuple[str, ...] = ()
    reason: str = "model"


def choose_route(route_input: RouteInput, known_models: Collection[str]) -> RouteDecision:
    if route_input.model not in known_models:
        raise ModelNotFoundError(f"The model {route_input.model!r} does not exist.", param="model")
    return RouteDecision(target=route_input.model)
