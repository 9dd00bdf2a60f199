"""The dispatcher: the one way from a request to the model that answers it.

```
dispatch(generation, route)
  explain:  facts (store views + prompt counts, off the event loop) → router.decide (pure)
  open:     router.open_first(decision, attempt)  — fallbacks, breakers, first-event timeout
  attempt:  store.stream(target, request + the role's sampling defaults), watched: latency
            learned by the router, telemetry told through the injected `DispatchObserver`;
            to a cloud target through the privacy filter (routing/privacy: scrubbed, restored)
```

Its inputs are plain data (`GenerationRequest`, `RouteRequest`) and its output the opened
stream with the decision, so the HTTP front doors, the council's fan-out and the CLI's
`konsilium route` all take the same path — and `explain()` is the same decision without
generating. Nothing here knows HTTP; nothing above reads the store's or the router's insides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from konsilium.errors import (
    CloudConsentRequiredError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
)
from model_store.backend import wrong_kind
from model_store.notices import Notice, StoreEvent
from model_store.store import ModelStore
from model_store.types import EmbeddingRequest, Embeddings, Finish, GenerationRequest, TextDelta
from model_store.views import ModelView
from routing.policy import CHARS_PER_TOKEN, CONSENT_HEADER, NO_CONSENT, RouteDecision, TargetState
from routing.privacy import Scrubber
from routing.privacy.scrubber import Vault
from routing.privacy.stream import restored, scrub_request
from routing.requests import Access, Prompt, RouteRequest, estimated_tokens, prompt_of
from routing.roles import RoleDecision
from routing.router import AllTargetsFailedError, Attempt, Router


class AttemptWatch(Protocol):
    """One target's try at a request, as telemetry sees it."""

    records_text: bool  # wants `text()` for every text delta (content recording is on)

    def first(self) -> None: ...

    def text(self, text: str) -> None: ...

    def finished(self, finish: Finish) -> None: ...

    def failed(self, error: GatewayError) -> None: ...

    def end(self) -> None: ...


class DispatchObserver(Protocol):
    def routed(self, started_ns: int, role: RoleDecision, decision: RouteDecision) -> None: ...

    def attempt(self, target: str, generation: GenerationRequest, redacted: Mapping[str, int]) -> AttemptWatch:
        """`redacted`: what the privacy filter replaced before a cloud target, counts by type."""


NOTHING_REDACTED: Mapping[str, int] = {}
SCRUB_INLINE_CHARS = 16_384  # longer prompts are scrubbed off the event loop
# what routing reads of an embedding: no role is read from the texts it embeds
NO_PROMPT = Prompt(user_text="", system_text="", estimated_tokens=0, max_tokens=None, short_answer=False)


class KindAccess(Access, frozen=True, kw_only=True):
    """What a request may use: what its key may (`keys`: false when keys are off), of its own
    kind only — a generation never an embedding model, an embedding nothing else. It is checked
    where a key's own exclusions are (`Router.permits`), before routing sees the chain: no
    decision, skip or error names a model of the other kind."""

    keys: bool
    embedding: bool  # the request wants vectors
    embedding_models: frozenset[str]

    def permits(self, name: str, base: str, tenants: Sequence[str]) -> bool:
        if (base in self.embedding_models) != self.embedding:
            return False
        return not self.keys or super().permits(name, base, tenants)


class _Unwatched:
    records_text = False

    def first(self) -> None:
        pass

    def text(self, text: str) -> None:
        pass

    def finished(self, finish: Finish) -> None:
        pass

    def failed(self, error: GatewayError) -> None:
        pass

    def end(self) -> None:
        pass


class NoDispatchObserver:
    def routed(self, started_ns: int, role: RoleDecision, decision: RouteDecision) -> None:
        pass

    def attempt(self, target: str, generation: GenerationRequest, redacted: Mapping[str, int]) -> AttemptWatch:
        return _Unwatched()


@dataclass
class Dispatched:
    role: RoleDecision
    decision: RouteDecision
    target: str  # the target that answers
    first: StoreEvent  # its first event (or the last target's `Loading` notice)
    events: AsyncGenerator[StoreEvent, None]  # the rest; close it when done
    failed: list[Attempt]  # the targets tried before it
    model: str = ""  # the model serving `target` (its base, when `target` is a LoRA adapter)

    @property
    def adapter(self) -> str | None:
        return self.target if self.target != self.model else None


@dataclass(frozen=True)
class Embedded:
    target: str  # the model that answered
    embeddings: Embeddings
    redacted: Mapping[str, int]  # what the privacy filter replaced before a cloud target, by type


class Dispatcher:
    def __init__(
        self,
        store: ModelStore,
        router: Router,
        *,
        observer: DispatchObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
        scrubber: Scrubber | None = None,
    ) -> None:
        self._scrubber = scrubber or Scrubber()
        self._store = store
        self._router = router
        self._observer = observer or NoDispatchObserver()
        self._clock = clock
        self._embedding = frozenset(v.id for v in store.view() if v.embedding)

    async def explain(
        self, generation: GenerationRequest, route: RouteRequest, *, quiet: bool = False
    ) -> tuple[RoleDecision, RouteDecision]:
        """The routing decision for this request in the current state, without generating.
        `quiet`: a look ahead (the council's, before its fan-out), neither counted nor traced."""
        return await self._decide(route, prompt_of(generation), generation, quiet=quiet)

    async def _decide(
        self, route: RouteRequest, prompt: Prompt, generation: GenerationRequest | None, *, quiet: bool
    ) -> tuple[RoleDecision, RouteDecision]:
        """`generation` None: an embedding's decision (its chain holds only embedding models)."""
        route = self._of_kind(route, embedding=generation is None)
        explicit = self._store.knows(route.model) and self._router.permits(route, route.model)
        if not explicit and not self._router.routes(route.model):  # another tenant's adapter is unknown too
            raise ModelNotFoundError(f"The model {route.model!r} does not exist.", param="model")
        started = time.time_ns()
        facts = await self.facts(generation, prompt)
        role, decision = self._router.decide(facts, route, prompt, explicit=explicit, quiet=quiet)
        if not quiet:
            self._observer.routed(started, role, decision)
        return role, decision

    async def dispatch(self, generation: GenerationRequest, route: RouteRequest) -> Dispatched:
        role, decision = await self.explain(generation, route)
        if (refused := unservable(decision, generation)) is not None:
            raise refused

        def attempt(target: str) -> AsyncGenerator[StoreEvent, None]:
            request = with_defaults(generation, self._router.target_defaults(role.role, target))
            if self._router.is_cloud(target):
                return self._to_cloud(target, generation, request)
            return self._watched(target, generation, self._store.stream(target, request))

        opened = await self._router.open_first(decision, attempt)
        model = self._store.base_of(opened.target)
        return Dispatched(role, decision, opened.target, opened.first, opened.events, opened.failed, model)

    def _of_kind(self, route: RouteRequest, *, embedding: bool) -> RouteRequest:
        """The request narrowed to the models of its kind. Naming a model of the other kind that
        the key may use is a 400; an embedding names its model (vectors of two models do not mix,
        so nothing routes one by role and nothing falls back)."""
        name, access = route.model, route.access
        if self._store.knows(name) and self._router.permits(route, name):
            if (self._store.base_of(name) in self._embedding) != embedding:
                raise wrong_kind(name, embedding=not embedding)
        elif embedding and self._router.routes(name):
            raise InvalidRequestError(
                f"An embeddings request names its model: {name!r} routes text generation only.", param="model"
            )
        mine = msgspec.structs.asdict(access) if access is not None else {"key": ""}
        kind = KindAccess(**mine, keys=access is not None, embedding=embedding, embedding_models=self._embedding)
        return msgspec.structs.replace(route, access=kind)

    async def embed(self, request: EmbeddingRequest, route: RouteRequest) -> Embedded:
        """Vectors from the embedding model the request names. The rules of every request apply:
        the key's models, and a cloud target's (allow_external_api, consent, the privacy filter:
        its texts go scrubbed, so an e-mail address is embedded as its placeholder)."""
        _, decision = await self._decide(route, NO_PROMPT, None, quiet=True)
        if (refused := unservable(decision, None)) is not None:
            raise refused
        target, redacted = decision.target, NOTHING_REDACTED
        assert target is not None, "unservable said why otherwise"
        if self._router.is_cloud(target):
            vault = self._scrubber.vault()
            request = await asyncio.to_thread(scrub_embedding, vault, request)
            redacted = vault.counts
        return Embedded(target, await self._store.embed(target, request), redacted)

    async def facts(self, generation: GenerationRequest | None, prompt: Prompt | None = None) -> dict[str, TargetState]:
        """Each target as routing sees it (an adapter shares its base's queue and context). The
        prompt is counted by a target's own tokenizer where the estimate puts it past half that
        target's context (else not worth it); counting is CPU work that grows with the prompt,
        so it runs in a thread and the event loop keeps serving everyone else."""
        views = self._store.view()
        out = {v.id: _target(v.id, v, v.state == "ready") for v in views}
        out |= {a.name: _target(a.name, v, a.resident) for v in views for a in v.adapters}
        if generation is None or prompt is None:
            return out
        near = [
            n for n, s in out.items() if s.context_length is not None and prompt.estimated_tokens * 2 > s.context_length
        ]
        if near:
            counts = await asyncio.to_thread(self._count, near, generation)
            out |= {n: msgspec.structs.replace(out[n], prompt_tokens=c) for n, c in counts.items()}
        return out

    def _count(self, names: list[str], generation: GenerationRequest) -> dict[str, int | None]:
        return {name: self._store.count_prompt_tokens(name, generation) for name in names}

    async def _to_cloud(
        self, target: str, generation: GenerationRequest, request: GenerationRequest
    ) -> AsyncGenerator[StoreEvent, None]:
        """Personal data and secrets leave as placeholders and come back restored (routing/privacy).
        Scrubbing is CPU work that grows with the prompt: a long one is scrubbed in a thread."""
        vault = self._scrubber.vault()
        if estimated_tokens(request) * CHARS_PER_TOKEN > SCRUB_INLINE_CHARS:
            scrubbed = await asyncio.to_thread(scrub_request, vault, request)
        else:
            scrubbed = scrub_request(vault, request)
        events = self._watched(target, generation, restored(vault, self._store.stream(target, scrubbed)), vault.counts)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def _watched(
        self,
        target: str,
        generation: GenerationRequest,
        events: AsyncGenerator[StoreEvent, None],
        redacted: Mapping[str, int] = NOTHING_REDACTED,
    ) -> AsyncGenerator[StoreEvent, None]:
        """One target's answer; once it finishes, the router learns this target's latency."""
        watch = self._observer.attempt(target, generation, redacted)
        opened = self._clock()
        first_at: float | None = None
        try:
            async for event in events:
                if first_at is None and not isinstance(event, Notice):
                    first_at = self._clock()
                    watch.first()
                if isinstance(event, TextDelta):
                    if watch.records_text:
                        watch.text(event.text)
                elif isinstance(event, Finish) and first_at is not None:
                    now = self._clock()
                    tokens = event.usage.completion_tokens
                    self._router.observe(target, (first_at - opened) * 1000, (now - opened) * 1000, tokens)
                    watch.finished(event)
                yield event
        except GatewayError as exc:
            watch.failed(exc)
            raise
        finally:
            watch.end()
            await events.aclose()


def unservable(decision: RouteDecision, generation: GenerationRequest | None) -> GatewayError | None:
    """Why no target can take this request (None: one can); `generation` None: an embedding."""
    if decision.target is not None:
        return None
    why = "; ".join(f"{s.target}: {s.why}" for s in decision.skipped)
    if decision.skipped and all(s.why == NO_CONSENT for s in decision.skipped):
        return CloudConsentRequiredError(
            f"Only a cloud target can answer and the request has no consent ({CONSENT_HEADER}: 1): {why}",
            param=CONSENT_HEADER,
        )
    if decision.too_long:
        return ContextLengthExceededError(
            f"The prompt is too long for every model that could answer: {why}",
            param="input" if generation is None else "messages" if generation.kind == "chat" else "prompt",
        )
    return AllTargetsFailedError(f"no target can serve this request: {why}", retry_after=5)


def _target(name: str, view: ModelView, resident: bool) -> TargetState:
    return TargetState(
        model=name,
        tier=view.tier,
        resident=resident,
        cloud=view.cloud,
        context_length=view.context_length,
        queue_depth=view.queued + view.in_flight,
        busy=view.in_flight >= view.max_concurrency,
        native_fim=view.fim == "native",
        load_ms=None if view.load_seconds is None else view.load_seconds * 1000,
    )


def scrub_embedding(vault: Vault, request: EmbeddingRequest) -> EmbeddingRequest:
    """Texts scrubbed as a prompt is; token ids cannot be read, so they cannot go to the cloud."""
    if request.tokens:
        raise InvalidRequestError(
            "Token ids cannot pass the privacy filter on their way to a cloud model: send the texts.", param="input"
        )
    return msgspec.structs.replace(request, texts=tuple(vault.scrub(t) for t in request.texts))


def with_defaults(generation: GenerationRequest, defaults: dict[str, float]) -> GenerationRequest:
    missing = {k: v for k, v in defaults.items() if getattr(generation, k) is None}
    return msgspec.structs.replace(generation, **missing) if missing else generation
