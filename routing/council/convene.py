"""The council: agents answer in parallel, an optional ranking pass, then the Director's verdict.

```
convene(generation, route, name)
  fan-out:  one task per seat → dispatcher.dispatch(agent_request, role:<seat>, local only)
            each under its deadline; its text streams out as it arrives (AgentText), it ends
            with an AgentDone (ok, failed or timeout — never dropped)
  ranking:  (optional) the agents or the Director rank the anonymised answers (ranking.py)
  verdict:  dispatcher.dispatch(director_request, role:director) — the Director's chain, a
            cloud target first when allowed (consent, privacy filter: the dispatcher's), local
            fallbacks after — its events stream out, then CouncilDone with every report
```

Every call goes through the same dispatcher as a plain request: its own chain, adapters,
fallbacks, breakers, budget and queue. So the fan-out is bounded by what the targets can run at
once — a model's slots and its FIFO queue — and the deadline counts from the fan-out's start,
queueing included. Agents never reach a cloud target (`RouteRequest.local_only`): only the
Director may. All agents failing is one error naming each (`all_failed`, as for a chain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing

import msgspec

from konsilium.config import AgentSeat, CouncilConfig
from konsilium.errors import BackendTimeoutError, ClientDisconnectedError, GatewayError, InternalError
from model_store.notices import Notice
from model_store.types import Event, Finish, GenerationRequest, TextDelta, Usage
from routing.council import prompts
from routing.council.ranking import combine, labels, parse_ranking
from routing.council.reports import (
    AgentDone,
    AgentOpened,
    AgentText,
    CallReport,
    CallWatch,
    CouncilDone,
    CouncilEvent,
    CouncilObserver,
    CouncilSummary,
    NoCouncilObserver,
    Ranked,
    Status,
    VerdictOpened,
    total_usage,
)
from routing.dispatch import Dispatched, Dispatcher, unservable
from routing.policy import RouteDecision
from routing.requests import RouteRequest
from routing.roles import RoleDecision
from routing.router import Attempt, all_failed

log = logging.getLogger(__name__)
RANKING_LATE = BackendTimeoutError("the ranking missed its deadline")
LEFT = ClientDisconnectedError("the request ended before this call did")


class Council:
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        observer: CouncilObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._dispatcher = dispatcher
        self._observer = observer or NoCouncilObserver()
        self._clock = clock

    async def convene(
        self, name: str, council: CouncilConfig, generation: GenerationRequest, route: RouteRequest
    ) -> AsyncGenerator[CouncilEvent, None]:
        self._observer.convened(name)
        run = _Run(self, name, council, generation, route)
        await self._director_can_answer(run)
        async with aclosing(run.agents()) as agents:  # closed when we are: no agent outlives us
            async for event in agents:
                yield event
        answers = run.answers()
        ranked = await run.rank(answers) if council.ranking != "off" and len(answers) > 1 else None
        if ranked is not None:
            yield ranked
        async with aclosing(run.verdict(answers, ranked)) as verdict:
            async for event in verdict:
                yield event

    async def _director_can_answer(self, run: _Run) -> None:
        """Before any agent runs: a Director no target can serve (only a cloud one, and no
        consent) would waste every agent's work on an answer that cannot come."""
        request = prompts.director_request(run.generation, [])
        _, decision = await self._dispatcher.explain(request, run.director_route(), quiet=True)
        if (refused := unservable(decision, request)) is not None:
            raise refused

    async def explain(
        self, council: CouncilConfig, generation: GenerationRequest, route: RouteRequest
    ) -> list[tuple[str, RoleDecision, RouteDecision]]:
        """Where each seat's call and the Director's would go now, without generating: the
        dispatcher's `explain` of the very requests a council sends (the verdict's without answers)."""
        run = _Run(self, "", council, generation, route)
        calls: list[tuple[str, GenerationRequest, RouteRequest]] = [
            (s.role, prompts.agent_request(generation, s), run.agent_route(s.role)) for s in run.seats
        ]
        calls.append(("director", prompts.director_request(generation, []), run.director_route()))
        return [(seat, *await self._dispatcher.explain(request, to)) for seat, request, to in calls]

    def now(self) -> float:
        return self._clock()

    async def call(self, watch: CallWatch, generation: GenerationRequest, route: RouteRequest) -> Dispatched:
        """Dispatch one council call with its span current (the dispatcher's spans nest in it)."""
        with watch.active():
            return await self._dispatcher.dispatch(generation, route)

    @property
    def observer(self) -> CouncilObserver:
        return self._observer


class _Run:
    """One council request: its seats' tasks, their reports, the calls after them."""

    def __init__(
        self, council: Council, name: str, config: CouncilConfig, generation: GenerationRequest, route: RouteRequest
    ) -> None:
        self.council, self.name, self.config = council, name, config
        self.generation, self.route = generation, route
        self.seats = config.seats()
        self.done: dict[str, AgentDone] = {}
        self.errors: dict[str, GatewayError] = {}
        self.rankers: tuple[CallReport, ...] = ()
        self.origin = council.now()

    def report(
        self,
        role: str,
        started: float,
        dispatched: Dispatched | None,
        usage: Usage | None = None,
        error: GatewayError | None = None,
        timeout: bool = False,
    ) -> CallReport:
        status: Status = "timeout" if timeout else "failed" if error is not None else "ok"
        return CallReport(
            role=role,
            status=status,
            started_ms=round((started - self.origin) * 1000, 1),
            latency_ms=round((self.council.now() - started) * 1000, 1),
            model=dispatched.model if dispatched else None,
            adapter=dispatched.adapter if dispatched else None,
            usage=usage,
            fallbacks=tuple(a.target for a in dispatched.failed) if dispatched else (),
            error=None if error is None else f"{error.code}: {error.message}",
        )

    def agent_route(self, role: str) -> RouteRequest:
        return msgspec.structs.replace(self.route, model=f"role:{role}", role=None, local_only=True)

    async def agents(self) -> AsyncGenerator[CouncilEvent, None]:
        queue: asyncio.Queue[CouncilEvent] = asyncio.Queue()
        tasks = [asyncio.create_task(self._agent(seat, queue)) for seat in self.seats]
        try:
            while len(self.done) < len(tasks):
                event = await queue.get()
                if isinstance(event, AgentDone):
                    self.done[event.report.role] = event
                yield event
        finally:  # the client left, or the consumer failed: no agent outlives the request
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _agent(self, seat: AgentSeat, out: asyncio.Queue[CouncilEvent]) -> None:
        watch = self.council.observer.call(self.name, "agent", seat.role)
        started, dispatched, usage = self.council.now(), None, None
        text: list[str] = []
        error: GatewayError | None = None
        timeout = False
        assert seat.deadline_ms is not None, "seats() fills it"
        try:
            async with asyncio.timeout(seat.deadline_ms / 1000):
                request = prompts.agent_request(self.generation, seat)
                dispatched = await self.council.call(watch, request, self.agent_route(seat.role))
                out.put_nowait(AgentOpened(seat.role, dispatched.model, dispatched.adapter))
                async with aclosing(_events(dispatched)) as events:
                    async for event in events:
                        if isinstance(event, TextDelta) and event.text:
                            text.append(event.text)
                            out.put_nowait(AgentText(seat.role, event.text))
                        elif isinstance(event, Finish):
                            usage = event.usage
        except asyncio.CancelledError:  # the request ended (the client left): the span still ends
            watch.done(self.report(seat.role, started, dispatched, error=LEFT))
            raise
        except Exception as exc:
            late = BackendTimeoutError(f"agent {seat.role} missed its deadline of {seat.deadline_ms:g} ms")
            error, timeout = _failure(exc, late, seat.role)
        report = self.report(seat.role, started, dispatched, usage, error, timeout)
        if error is not None:
            self.errors[seat.role] = error
        watch.done(report)
        out.put_nowait(AgentDone(report, "".join(text) if error is None else ""))

    def answers(self) -> list[tuple[str, str]]:
        """The agents that answered, in seat order; none: one error naming each agent's."""
        answers: list[tuple[str, str]] = [
            (s.role, self.done[s.role].text) for s in self.seats if self.done[s.role].report.status == "ok"
        ]
        if not answers:
            reports = [self.done[s.role].report for s in self.seats]
            errors = [self.errors[r.role] for r in reports]
            failed = [
                Attempt(target=r.role, error=e.code, ms=round(r.latency_ms))
                for r, e in zip(reports, errors, strict=True)
            ]
            raise all_failed(failed, errors, noun="agent", unwrap_one=False)
        return answers

    async def rank(self, answers: Sequence[tuple[str, str]]) -> Ranked:
        names = labels(len(answers))
        request = prompts.ranking_request(self.generation, list(zip(names, (t for _, t in answers), strict=True)))
        rankers = [role for role, _ in answers] if self.config.ranking == "agents" else ["director"]
        results = await asyncio.gather(*(self._rank_by(role, request) for role in rankers))
        self.rankers = tuple(report for report, _ in results)
        parsed = [parse_ranking(text, names) for _, text in results]
        best = combine([order for order in parsed if order is not None], names)
        by_label = dict(zip(names, (role for role, _ in answers), strict=True))
        return Ranked(ranking=tuple(by_label[label] for label in best), rankers=self.rankers)

    async def _rank_by(self, role: str, request: GenerationRequest) -> tuple[CallReport, str]:
        """One ranker's answer ("" when it failed: a ranking is advice, never a reason to fail)."""
        watch = self.council.observer.call(self.name, "ranking", role)
        route = self.agent_route(role) if role != "director" else self.director_route()
        started, dispatched = self.council.now(), None
        events: list[Event] = []
        try:
            async with asyncio.timeout(self.config.agent_deadline_ms / 1000):
                dispatched = await self.council.call(watch, request, route)
                async with aclosing(_events(dispatched)) as answer:
                    events = [e async for e in answer]
        except asyncio.CancelledError:
            watch.done(self.report(role, started, dispatched, error=LEFT))
            raise
        except Exception as exc:
            error, timeout = _failure(exc, RANKING_LATE, f"{role} (ranking)")
            report = self.report(role, started, dispatched, error=error, timeout=timeout)
        else:
            usage = next((e.usage for e in events if isinstance(e, Finish)), None)
            report = self.report(role, started, dispatched, usage)
        watch.done(report)
        return report, "".join(e.text for e in events if isinstance(e, TextDelta))

    def director_route(self) -> RouteRequest:
        return msgspec.structs.replace(self.route, model="role:director", role=None, local_only=False)

    async def verdict(
        self, answers: Sequence[tuple[str, str]], ranked: Ranked | None
    ) -> AsyncGenerator[CouncilEvent, None]:
        request = prompts.director_request(
            self.generation,
            answers,
            ranking=ranked.ranking if ranked else (),
            instructions=self.config.director_instructions,
            max_tokens=self.config.director_max_tokens,
        )
        watch = self.council.observer.call(self.name, "verdict", "director")
        started, dispatched, usage = self.council.now(), None, None
        try:
            dispatched = await self.council.call(watch, request, self.director_route())
            yield VerdictOpened(dispatched.model, dispatched.adapter, tuple(a.target for a in dispatched.failed))
            async with aclosing(_events(dispatched)) as events:
                async for event in events:
                    if isinstance(event, Finish):
                        usage = event.usage
                    yield event
        except (asyncio.CancelledError, GeneratorExit):
            watch.done(self.report("director", started, dispatched, error=LEFT))
            raise
        except Exception as exc:
            watch.done(self.report("director", started, dispatched, error=_failure(exc, LEFT, "director")[0]))
            raise
        director = self.report("director", started, dispatched, usage)
        watch.done(director)
        yield CouncilDone(self.summary(director, ranked))

    def summary(self, director: CallReport, ranked: Ranked | None) -> CouncilSummary:
        agents = tuple(self.done[s.role].report for s in self.seats)
        return CouncilSummary(
            council=self.name,
            agents=agents,
            director=director,
            usage=total_usage((*agents, *self.rankers, director)),
            ranking=ranked.ranking if ranked else (),
            rankers=self.rankers,
        )


def _failure(exc: Exception, late: GatewayError, who: str) -> tuple[GatewayError, bool]:
    """What a call's exception says of it: (the error to report, whether it was its deadline).
    A bug is reported as that call's failure, and the council goes on."""
    if isinstance(exc, TimeoutError):
        return late, True
    if isinstance(exc, GatewayError):
        return exc, False
    log.exception("council call %s failed", who)
    return InternalError(f"the call of {who} failed: {type(exc).__name__}"), False


async def _events(dispatched: Dispatched) -> AsyncGenerator[Event, None]:
    """A dispatched call's backend events, its first included, notices dropped; closed at the end."""
    try:
        first = dispatched.first
        if not isinstance(first, Notice):
            yield first
        async for event in dispatched.events:
            if not isinstance(event, Notice):
                yield event
    finally:
        await dispatched.events.aclose()
