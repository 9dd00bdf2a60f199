"""The router: the pure decisions, plus what they need from the world — and the fallback loop.

`decide()` resolves the role (triggers) and chooses the target (policy) from a snapshot of the
targets that merges the store's facts with the latency and breaker state learned here.
`open_first()` walks the chain: it opens the target, waits for its first event (within
`local_timeout_ms`), and moves on when the target fails before that — connection refused, 5xx,
a load that fails or does not fit, a full queue, no first event in time. After the first event
the target is kept: a later failure ends the answer with an error, never with a switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from konsilium.config import Config, RoleRoute
from konsilium.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    UnsupportedParameterError,
)
from konsilium.observability.events import NoObserver, Observer
from model_store.notices import Admitted, Loading, Notice, Queued, StoreEvent
from routing.classifier import RoleClassifier, load_model
from routing.health import Breaker, Latency
from routing.policy import (
    CLOUD_OFF,
    LOCAL_ONLY,
    NO_CONSENT,
    RouteDecision,
    RouteInput,
    TargetState,
    choose_route,
)
from routing.requests import Prompt, RouteRequest
from routing.roles import RoleDecision, resolve_role
from routing.rules import AGENT_ROLES, AgentRole, RoutingRules, load_rules
from routing.triggers import TriggerIndex

DEFAULT_RULES = Path(__file__).resolve().parent / "triggers.yaml"  # packaged (package-data)
ROUTED_MODELS = ("auto",)  # `konsilium` is the council (routing/council/)
TIER_ORDER = ("primary", "secondary", "lightweight", "micro", "optional_moe")
# A target that fails for one of these reasons may succeed elsewhere; other client errors may not.
RETRY_ELSEWHERE = (ContextLengthExceededError, UnsupportedParameterError)

log = logging.getLogger(__name__)


class Attempt(msgspec.Struct, frozen=True):
    target: str
    error: str  # the error's code
    ms: int


class TargetHealth(msgspec.Struct, frozen=True):
    ttft_ms: float | None  # learned time to first token (EWMA)
    breaker: str  # closed | half_open | open


class AllTargetsFailedError(BackendUnavailableError):
    default_code = "all_targets_failed"


@dataclass
class Opened:
    target: str
    first: StoreEvent  # a backend event, or the last target's `Loading` notice
    events: AsyncGenerator[StoreEvent, None]
    failed: list[Attempt]


def load_routing_rules(config: Config) -> RoutingRules:
    """The configured triggers file, else the packaged one; a file that is missing or unreadable
    is a config error (never silently empty rules: every request would go to the default role)."""
    return load_rules(Path(config.routing.rules) if config.routing.rules else DEFAULT_RULES)


def role_readers(rules: RoutingRules) -> tuple[TriggerIndex, RoleClassifier | None]:
    """The trigger index and, when the rules name a trained model, the classifier beside it (the
    index reads transliterations into the model's stems too)."""
    if not rules.classifier.file:
        return TriggerIndex(rules), None
    model = load_model(Path(rules.classifier.file))
    index = TriggerIndex(rules, translit_stems=model.translit_stems)
    return index, RoleClassifier(model, index)


class Router:
    def __init__(
        self,
        config: Config,
        rules: RoutingRules,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self._config = config
        self._routing = config.routing
        self.rules = rules
        self.index, self.classifier = role_readers(rules)
        self._clock = clock
        self._observer = observer or NoObserver()
        targets = config.addressable()
        # each name a request may give: its base model, and the tenants an adapter belongs to
        self._owners = {name: (m.id, tuple(a.tenants) if a else ()) for name, (m, a) in targets.items()}
        self._local = {name for name, (m, _) in targets.items() if not m.is_cloud}
        self._managed = {name for name, (m, _) in targets.items() if m.path is not None}  # processes we run
        self._tiers = [m.id for m in sorted(config.models, key=lambda m: TIER_ORDER.index(m.role))]
        self._adapters_for = {
            role: tuple(name for name, (_, a) in targets.items() if a is not None and role in a.roles)
            for role in AGENT_ROLES
        }
        self.latency: dict[str, Latency] = {}
        self.breakers = {
            name: Breaker(self._routing.breaker_failures, self._routing.breaker_cooldown_s, clock) for name in targets
        }

    def inherit(self, old: Router, fresh: Collection[str] = ()) -> None:
        """After a reload: what `old` learned of the targets both know, except the `fresh` ones (a
        new process); breakers are kept only while their settings are unchanged."""
        kept = {name for name in self.breakers if name not in fresh}
        self.latency = {name: learned for name, learned in old.latency.items() if name in kept}
        if (old._routing.breaker_failures, old._routing.breaker_cooldown_s) == (
            self._routing.breaker_failures, self._routing.breaker_cooldown_s):  # fmt: skip
            self.breakers.update({name: b for name, b in old.breakers.items() if name in kept})

    def forget_reading(self) -> None:
        """Empty what the triggers and the classifier remember of the chunks they have read (the
        routing benchmark's cold case)."""
        self.index.forget()
        if self.classifier is not None:
            self.classifier.forget()

    def forget(self, name: str) -> None:
        """A target that is a new process now (a promoted or rolled-back revision): learn it anew."""
        self.latency.pop(name, None)
        if name in self.breakers:
            self.breakers[name] = Breaker(self._routing.breaker_failures, self._routing.breaker_cooldown_s, self._clock)

    # ---- deciding (no awaits) ----------------------------------------------------------------
    def decide(
        self,
        facts: Mapping[str, TargetState],
        route: RouteRequest,
        prompt: Prompt,
        *,
        explicit: bool,
        quiet: bool = False,
    ) -> tuple[RoleDecision, RouteDecision]:
        """`explicit`: `route.model` names a model or an adapter (it goes first). `quiet`: a
        look ahead, not a request's decision (not counted)."""
        role = resolve_role(
            self.rules,
            self.index,
            header=route.role,
            model=route.model,
            user_text=prompt.user_text,
            system_text=prompt.system_text,
            classifier=self.classifier,
        )
        if not quiet:
            self._observer.decided(role.role, role.source, role.language)
        configured = self._routing.roles.get(role.role)
        budget = route.latency_budget_ms
        if budget is None and configured is not None:
            budget = configured.latency_target_ms
        decision = choose_route(
            RouteInput(
                role=role.role,
                chain=tuple(t for t in self._chain(role.role, configured, explicit) if self.permits(route, t)),
                explicit_model=route.model if explicit else None,
                prompt_tokens=prompt.estimated_tokens,
                max_tokens=prompt.max_tokens,
                latency_budget_ms=budget,
                ab=route.ab,
                tier=route.tier,
                short_answer=prompt.short_answer,
                fill_in_middle=prompt.fill_in_middle,
                cloud_refused=self._cloud_refused(route),
            ),
            self.snapshot(facts),
            reason="model" if explicit else _reason(role),
        )
        return role, decision

    def _cloud_refused(self, route: RouteRequest) -> str:
        if not self._config.allow_external_api:
            return CLOUD_OFF
        if route.local_only:
            return LOCAL_ONLY
        if self._config.privacy.require_consent and not route.cloud_consent:
            return NO_CONSENT
        return ""

    def permits(self, route: RouteRequest, name: str) -> bool:
        """The caller's key may use this model or adapter (with keys off, anything known)."""
        owner = self._owners.get(name)
        if owner is None:
            return False
        return route.access is None or route.access.permits(name, *owner)

    def routes(self, model: str) -> bool:
        """`auto`, `konsilium`, a role (`security`, `role:security`) or an alias: the router picks."""
        name = model.removeprefix("role:")
        return model in ROUTED_MODELS or name in AGENT_ROLES or name in self.rules.aliases

    def view(self) -> dict[str, TargetHealth]:
        """What the router has learned, per target: plain data for the admin API and metrics."""
        return {
            name: TargetHealth(ttft_ms=self.latency.get(name, Latency()).ttft_ms, breaker=breaker.state())
            for name, breaker in self.breakers.items()
        }

    def _chain(self, role: AgentRole, route: RoleRoute | None, explicit: bool) -> tuple[str, ...]:
        if route is not None and route.targets:
            return tuple(t.target for t in route.targets)
        if explicit:
            return ()
        return self._adapters_for[role] + tuple(self._tiers)  # none configured: the role's adapters, then by tier

    def snapshot(self, facts: Mapping[str, TargetState]) -> dict[str, TargetState]:
        out = {}
        for model, state in facts.items():
            latency = self.latency.get(model, Latency())
            breaker = self.breakers.get(model)
            out[model] = msgspec.structs.replace(
                state,
                ttft_ms=latency.ttft_ms,
                request_ms=latency.request_ms,
                breaker_open=bool(breaker and breaker.blocked()),
            )
        return out

    def target_defaults(self, role: AgentRole, model: str) -> dict[str, float]:
        """The sampling defaults the role's chain sets for this target (the client's values win)."""
        route = self._routing.roles.get(role)
        for target in route.targets if route else ():
            if target.target == model:
                return {
                    k: v for k, v in (("temperature", target.temperature), ("top_p", target.top_p)) if v is not None
                }
        return {}

    # ---- the fallback loop -------------------------------------------------------------------
    async def open_first(
        self, decision: RouteDecision, open_target: Callable[[str], AsyncGenerator[StoreEvent, None]]
    ) -> Opened:
        """Walk the chain until a target gives its first event.

        The first-event timeout (`local_timeout_ms`) measures the target's own work on this
        request: it starts once the request holds one of the model's slots, so a wait in the
        model's bounded queue (`Queued` … `Admitted`) never counts — a healthy, busy model is not
        a failed one. A model load counts while another target could still be tried, so a load
        that fails or takes too long falls back (the load itself goes on in the store); the last
        target is returned at its `Loading` notice, and the gateway streams heartbeats meanwhile.
        (`_timeout_s` says where no timeout applies.)

        Only target faults move a breaker (`GatewayError.target_fault`): a request the target
        refuses, a full queue, an upstream rate limit or a time-out of a model process we run
        (alive, so busy with a long prefill — its real faults are crashes and failed loads) leave
        it as it was."""
        failed: list[Attempt] = []
        errors: list[GatewayError] = []
        local_tries = 0
        assert decision.target is not None
        chain = (decision.target, *decision.fallbacks)
        for position, target in enumerate(chain):
            local = target in self._local
            if local and local_tries >= self._routing.max_local_attempts:
                continue
            local_tries += local
            breaker = self.breakers[target]
            breaker.attempt()
            started = self._clock()
            events = open_target(target)
            last = not self._any_left(chain[position + 1 :], local_tries)
            try:
                first = await self._first(events, self._timeout_s(target, last), until_loaded=not last)
            except GatewayError as error:
                if self._is_fault(target, error):
                    breaker.failure()
                else:
                    breaker.release()
                if isinstance(error, InvalidRequestError) and not isinstance(error, RETRY_ELSEWHERE):
                    raise  # the request itself is wrong: no other target would take it
                errors.append(error)
                failed.append(Attempt(target=target, error=error.code, ms=round((self._clock() - started) * 1000)))
                log.warning("target %s failed before answering (%s): %s", target, error.code, error.message)
                self._observer.attempt_failed(target, error.code)
                continue
            breaker.success()
            return Opened(target=target, first=first, events=events, failed=failed)
        raise all_failed(failed, errors)

    def is_cloud(self, target: str) -> bool:
        return target not in self._local

    def _is_fault(self, target: str, error: GatewayError) -> bool:
        return error.target_fault and not (isinstance(error, BackendTimeoutError) and target in self._managed)

    def _timeout_s(self, target: str, last: bool) -> float | None:
        """No first-event timeout for a cloud target (its client has its own), nor for the last
        resort when it is a process we run: it is alive (a crash ends the wait with an error) and
        a long prompt's prefill may simply take longer — there is nothing better to switch to."""
        if target not in self._local or (last and target in self._managed):
            return None
        return self._routing.local_timeout_ms / 1000

    def _any_left(self, rest: tuple[str, ...], local_tries: int) -> bool:
        return any(t not in self._local or local_tries < self._routing.max_local_attempts for t in rest)

    async def _first(
        self, events: AsyncGenerator[StoreEvent, None], seconds: float | None, *, until_loaded: bool
    ) -> StoreEvent:
        """The first backend event (or, with `until_loaded` off, a `Loading` notice)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds) as deadline:
                first = await anext(events)
                while isinstance(first, Notice) and (until_loaded or not isinstance(first, Loading)):
                    if isinstance(first, Queued):
                        deadline.reschedule(None)  # waiting for a slot is not the target's time
                    elif isinstance(first, Admitted) and seconds is not None:
                        deadline.reschedule(loop.time() + seconds)
                    first = await anext(events)
            return first
        except TimeoutError as exc:
            await events.aclose()
            raise BackendTimeoutError(f"no first event within {self._routing.local_timeout_ms:g} ms") from exc
        except StopAsyncIteration as exc:
            raise BackendUnavailableError("the target ended before answering") from exc

    def observe(self, target: str, ttft_ms: float, total_ms: float, tokens: int) -> None:
        self.latency.setdefault(target, Latency()).observe(ttft_ms, total_ms, tokens)


def _reason(role: RoleDecision) -> str:
    if role.source in ("trigger", "system", "classifier") and role.matched:
        return f"{role.source}:{role.matched[0]}"
    return role.source


def all_failed(
    failed: list[Attempt], errors: list[GatewayError], *, noun: str = "target", unwrap_one: bool = True
) -> GatewayError:
    """One error for a set of failed tries (the targets of a chain, the agents of a council)."""
    if len(errors) == 1 and unwrap_one:
        return errors[0]  # one target, one failure: its own error says it best
    if errors and all(isinstance(e, InvalidRequestError) for e in errors):
        return errors[-1]  # every target refused the request itself: that is the client's answer
    listing = "; ".join(f"{a.target}: {a.error} ({a.ms} ms)" for a in failed) or f"no {noun} could be tried"
    if errors and isinstance(errors[-1], RateLimitError):
        return RateLimitError(f"every {noun} failed: {listing}", retry_after=errors[-1].retry_after or 1)
    return AllTargetsFailedError(f"every {noun} failed: {listing}", retry_after=5)
