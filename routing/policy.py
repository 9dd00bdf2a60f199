"""`choose_route`: from a role and a snapshot of the targets to a decision. Pure.

Plain data in, plain data out — no awaits, no clock, no logging. The chain is the explicitly
requested model (if any) followed by the role's configured targets. Targets are skipped when
they cannot serve: a cloud target while external APIs are off, without the caller's consent or
for a council agent (`RouteInput.cloud_refused` says which), an open circuit breaker, a
context too small for the prompt — counted by the target's own tokenizer where the gateway has
it (`TargetState.prompt_tokens`), else estimated at 3 characters a token; an estimate never
skips every target: then they are kept and the model's own tokenizer decides. Targets that hold
the prompt plus the whole `max_tokens` go before those that would clamp it (clients such as
Continue ask for 4096).
Otherwise order is kept (it is the tier order the operator wrote) except where a request asks:

- a latency budget moves the targets predicted to meet it to the front (prediction: the load
  time if not resident, plus the queue ahead times the usual request time, plus the time to
  first token);
- an A/B request moves the first `secondary`-tier target to the front;
- a requested tier (`x-konsilium-tier`) moves the first target of that tier to the front;
- a short answer (a yes/no or classification check: `max_tokens` <= 16, or a JSON schema that
  allows only a boolean or an enum) moves the first `micro`-tier target to the front;
- when the first target is busy (every slot taken: the request would queue), the first idle
  `lightweight`-tier target goes before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import msgspec

from routing.rules import AgentRole

CLOUD_OFF = "cloud target; allow_external_api is off"
CONSENT_HEADER = "x-konsilium-cloud-consent"
NO_CONSENT = f"cloud target; no consent ({CONSENT_HEADER})"
LOCAL_ONLY = "cloud target; council agents answer locally"


class TargetState(msgspec.Struct, frozen=True):
    """What the router knows about one target right now."""

    model: str
    tier: str = "secondary"  # the manifest's role
    resident: bool = False
    cloud: bool = False
    context_length: int | None = None
    queue_depth: int = 0
    busy: bool = False  # every slot taken: a new request would wait in the queue
    ttft_ms: float | None = None  # exponentially weighted, from real traffic
    request_ms: float | None = None  # a whole request, from real traffic
    load_ms: float | None = None  # the last measured load, else None
    prompt_tokens: int | None = None  # this prompt in the target's own tokens, where counted
    breaker_open: bool = False
    native_fim: bool = False  # its vocabulary has fill-in-the-middle tokens


class RouteInput(msgspec.Struct, frozen=True):
    role: AgentRole
    chain: tuple[str, ...]  # the role's configured targets, in tier order
    explicit_model: str | None = None
    prompt_tokens: int = 0
    max_tokens: int | None = None
    latency_budget_ms: float | None = None
    ab: bool = False
    tier: str | None = None
    short_answer: bool = False  # a yes/no or classification check
    fill_in_middle: bool = False  # a `suffix` to fill up to: native FIM models first
    cloud_refused: str = CLOUD_OFF  # why cloud targets are skipped for this request; "" when they may answer


class Skipped(msgspec.Struct, frozen=True):
    target: str
    why: str


class RouteDecision(msgspec.Struct, frozen=True):
    target: str | None
    fallbacks: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    reason: str = ""
    too_long: bool = False  # no target, and only because the prompt fits none of them


CHARS_PER_TOKEN = 3  # a conservative estimate: Russian runs ~3 characters a token, English ~4
DEFAULT_LOAD_MS = 2_000.0
DEFAULT_TTFT_MS = 200.0
DEFAULT_REQUEST_MS = 2_000.0


def choose_route(route: RouteInput, snapshot: Mapping[str, TargetState], reason: str) -> RouteDecision:
    chain = list(dict.fromkeys(([route.explicit_model] if route.explicit_model else []) + list(route.chain)))
    usable: list[str] = []
    skipped: list[Skipped] = []
    too_small: list[str] = []  # skipped on an estimate
    no_room: list[str] = []  # skipped for the context, estimated or counted
    for model in chain:
        why = _why_skip(route, snapshot.get(model))
        if why:
            skipped.append(Skipped(target=model, why=why))
        elif not _holds(route, snapshot[model], 1):
            no_room.append(model)
            if snapshot[model].prompt_tokens is None:
                too_small.append(model)
            skipped.append(Skipped(target=model, why=_context_why(route, snapshot[model])))
        else:
            usable.append(model)
    if not usable and too_small:  # an estimate only: let the model's tokenizer decide
        usable, skipped = too_small, [s for s in skipped if s.target not in too_small]
    roomy = [m for m in usable if _holds(route, snapshot[m], route.max_tokens or 1)]
    usable = roomy + [m for m in usable if m not in roomy]  # whole max_tokens first; others clamp it
    ordered, why_first = _order(route, usable, snapshot)
    if not ordered:
        too_long = bool(skipped) and len(no_room) == len(skipped)
        return RouteDecision(
            target=None, skipped=tuple(skipped), reason="no target can serve this request", too_long=too_long
        )
    return RouteDecision(
        target=ordered[0], fallbacks=tuple(ordered[1:]), skipped=tuple(skipped), reason=why_first or reason
    )


def estimate_tokens(chars: int) -> int:
    """The prompt's size in tokens before any tokenizer is at hand (the model's own check follows)."""
    return chars // CHARS_PER_TOKEN + 1


def predicted_ms(state: TargetState) -> float:
    load = 0.0 if state.resident else (state.load_ms or DEFAULT_LOAD_MS)
    queue = state.queue_depth * (state.request_ms or DEFAULT_REQUEST_MS)
    return load + queue + (state.ttft_ms or DEFAULT_TTFT_MS)


def _why_skip(route: RouteInput, state: TargetState | None) -> str:
    if state is None:
        return "unknown model"
    if state.cloud and route.cloud_refused:
        return route.cloud_refused
    if state.breaker_open:
        return "circuit breaker open"
    return ""


def _holds(route: RouteInput, state: TargetState, generated: int) -> bool:
    """Room for the prompt (counted by the target's tokenizer, else estimated) plus `generated`."""
    prompt = route.prompt_tokens if state.prompt_tokens is None else state.prompt_tokens
    return state.context_length is None or prompt + generated <= state.context_length


def _context_why(route: RouteInput, state: TargetState) -> str:
    if state.prompt_tokens is not None:
        return f"context {state.context_length} < {state.prompt_tokens + 1} tokens of prompt"
    return f"context {state.context_length} < ~{route.prompt_tokens + 1} tokens of prompt"


def _order(route: RouteInput, usable: Sequence[str], snapshot: Mapping[str, TargetState]) -> tuple[list[str], str]:
    ordered = list(usable)
    asked = route.tier or ("micro" if route.short_answer else None)
    if asked is not None:
        ordered, moved = _front(ordered, lambda m: snapshot[m].tier == asked)
        if moved:
            return ordered, f"tier:{asked}"
    if route.fill_in_middle and route.explicit_model is None:
        ordered, moved = _front(ordered, lambda m: snapshot[m].native_fim)
        if moved:
            return ordered, "fim"
    if route.ab:
        ordered, moved = _front(ordered, lambda m: snapshot[m].tier == "secondary")
        if moved:
            return ordered, "ab:secondary"
    if route.latency_budget_ms is not None:
        budget = route.latency_budget_ms
        meets = [m for m in ordered if predicted_ms(snapshot[m]) <= budget]
        if meets and meets[0] != (ordered[0] if ordered else None):
            return meets + [m for m in ordered if m not in meets], f"latency:{budget:g}ms"
    if ordered and snapshot[ordered[0]].busy:
        busy = ordered[0]
        ordered, moved = _front(ordered, lambda m: snapshot[m].tier == "lightweight" and not snapshot[m].busy)
        if moved:
            return ordered, f"busy:{busy}"
    return ordered, ""


def _front(models: list[str], wanted: Callable[[str], bool]) -> tuple[list[str], bool]:
    for model in models:
        if wanted(model):
            return [model] + [m for m in models if m != model], model != models[0]
    return models, False
