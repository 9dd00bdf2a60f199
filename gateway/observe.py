"""Per request: the server span, the access log line, request metrics; per attempt: the backend
call span (`chat {model}`, first token as an event) and token metrics.

The middleware wraps every HTTP request except `/metrics` and `/health` (scrapes and probes):
it opens the server span (continuing a `traceparent` the client sent), returns its trace id in
`x-konsilium-trace-id`, and when the last byte has gone — streams included — records the
request's metrics and writes one access log line from the `RequestRecord` the handler filled
(an inference request's record then goes to the status page's ring, gateway/recent.py).
Spans opened meanwhile (routing, queue wait, model load, the backend calls) are its children.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode

from gateway.recent import RecentRequests
from konsilium.config import TelemetryConfig
from konsilium.errors import GatewayError
from konsilium.observability.logs import ACCESS_LOGGER
from konsilium.observability.metrics import Metrics
from konsilium.observability.tracing import trace_id, tracer
from model_store.types import Finish, GenerationRequest
from routing.council.reports import CallReport
from routing.dispatch import Embedded
from routing.policy import RouteDecision
from routing.roles import RoleDecision

access_log = logging.getLogger(ACCESS_LOGGER)
UNOBSERVED = frozenset({"/metrics", "/health"})
TRACE_HEADER = b"x-konsilium-trace-id"
PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})  # W3C trace context, continued


@dataclass
class RequestRecord:
    """What one request did; the handler and the attempt wrapper fill it, the middleware reads it."""

    started: float = field(default_factory=time.perf_counter)
    trace_id: str = ""
    request_id: str = ""
    inference: bool = False  # a completion request (counted in konsilium_requests_total)
    stream: bool = False
    role: str = ""
    model: str = ""  # the model that answered, else the one asked for
    route: str = ""  # the routing decision's reason
    fallbacks: tuple[str, ...] = ()
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    redacted: dict[str, int] = field(default_factory=dict)  # by the privacy filter, counts by type
    status: int = 500  # the answer's, once its head has gone
    key: str = ""  # the API key's name (never its secret), when keys are on
    tenant: str = ""
    prompt: str | None = None  # the last user message, only with telemetry.record_content
    answer: str | None = None  # likewise the answer


CURRENT: ContextVar[RequestRecord | None] = ContextVar("konsilium_request", default=None)


def current() -> RequestRecord:
    """The record of the request being served (a throwaway one outside the middleware)."""
    return CURRENT.get() or RequestRecord()


def recording() -> bool:
    """Whether the request's span records: when it does not (no exporter, or not sampled), its
    child spans would record nothing either, and are not made at all."""
    return trace.get_current_span().is_recording()


class ObservedApp:
    """Pure ASGI middleware (so a stream's span ends with its last byte, not with the handler)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, recent: RecentRequests | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.recent = recent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] in UNOBSERVED:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        record = RequestRecord()
        status = 500
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in PROPAGATED}
        attributes = {"http.request.method": method, "url.path": path}
        with tracer().start_as_current_span(
            f"{method} {path}",
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            record.trace_id = trace_id(span)

            async def send_with_trace_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = record.status = message["status"]
                    if record.trace_id:
                        message["headers"] = [*message.get("headers", ()), (TRACE_HEADER, record.trace_id.encode())]
                await send(message)

            token = CURRENT.set(record)
            try:
                await self.app(scope, receive, send_with_trace_id)
            finally:
                CURRENT.reset(token)
                self._finish(span, record, method, path, status)

    def _finish(self, span: trace.Span, record: RequestRecord, method: str, path: str, status: int) -> None:
        seconds = time.perf_counter() - record.started
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, record.error or str(status)))
        if record.inference and self.metrics is not None:
            self.metrics.answered(record.model, record.role, status, record.stream, seconds)
        if record.inference and self.recent is not None:
            self.recent.add(record, path, status, seconds)
        access_log.info(
            "%s %s %d", method, path, status, extra={"fields": _access_fields(record, method, path, status, seconds)},
        )  # fmt: skip


def _access_fields(record: RequestRecord, method: str, path: str, status: int, seconds: float) -> dict[str, object]:
    fields: dict[str, object] = {
        "request_id": record.request_id, "trace_id": record.trace_id, "method": method,
        "path": path, "status": status, "duration_ms": round(seconds * 1000, 1),
    }  # fmt: skip
    if record.inference:
        fields |= {
            "role": record.role, "model": record.model, "stream": record.stream, "fallbacks": list(record.fallbacks),
            "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 1),
            "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        }  # fmt: skip
    if record.key:
        fields |= {"key": record.key, "tenant": record.tenant or None}
    if record.redacted:
        fields["redacted"] = record.redacted
    if record.error:
        fields["error"] = record.error
    return fields


class Telemetry:
    """The dispatcher's observer: the routing span, and per attempt a GenAI client span
    (`chat {model}`, first token as an event) plus the token metrics and the request record."""

    def __init__(self, metrics: Metrics | None, settings: TelemetryConfig) -> None:
        self._metrics = metrics
        self._settings = settings

    def routed(self, started_ns: int, role: RoleDecision, decision: RouteDecision) -> None:
        """The decision's reason into the request's record, and its span, made once the decision
        is known: its attributes go in at creation (one copy, not one locked set per attribute)
        and it never becomes the current span."""
        record = current()
        if not record.route:  # a council's seats are each routed: the council named its own
            record.route = decision.reason
        if recording():
            tracer().start_span("route", start_time=started_ns, attributes=route_attributes(role, decision)).end()

    def attempt(self, target: str, generation: GenerationRequest, redacted: Mapping[str, int]) -> AttemptSpan:
        note_redacted(self._metrics, redacted)
        record = current()
        if self._settings.record_content and record.prompt is None:
            record.prompt = prompt_text(generation)
        return AttemptSpan(target, generation, self._metrics, self._settings, redacted)

    # ---- the council's observer ------------------------------------------------------------
    def convened(self, council: str) -> None:
        if self._metrics is not None:
            self._metrics.councils.inc((council,))

    def call(self, council: str, kind: Literal["agent", "ranking", "verdict"], role: str) -> CouncilSpan:
        return CouncilSpan(council, kind, role, self._metrics)


class CouncilSpan:
    """One council call's span (`council.agent security`), the parent of its dispatch's spans."""

    def __init__(self, council: str, kind: str, role: str, metrics: Metrics | None) -> None:
        attributes = {"konsilium.council": council, "konsilium.council.call": kind, "konsilium.role": role}
        self._span = (
            INVALID_SPAN if not recording() else tracer().start_span(f"council.{kind} {role}", attributes=attributes)
        )
        self._council, self._kind, self._role, self._metrics = council, kind, role, metrics

    def active(self) -> AbstractContextManager[object]:
        return trace.use_span(self._span, end_on_exit=False)

    def done(self, report: CallReport) -> None:
        span = self._span
        span.set_attributes({"konsilium.council.status": report.status, "konsilium.latency_ms": report.latency_ms})
        if report.model:
            span.set_attribute("konsilium.target", report.adapter or report.model)
        if report.error:
            span.set_status(Status(StatusCode.ERROR, report.error[:200]))
        span.end()
        if self._metrics is not None:
            self._metrics.council_call(self._council, self._kind, self._role, report.status, report.latency_ms / 1000)


class AttemptSpan:
    def __init__(
        self,
        target: str,
        generation: GenerationRequest,
        metrics: Metrics | None,
        settings: TelemetryConfig,
        redacted: Mapping[str, int],
    ) -> None:
        self._span: trace.Span = INVALID_SPAN
        if recording():
            operation = "chat" if generation.kind == "chat" else "text_completion"
            attributes = _request_attributes(operation, target, generation, settings)
            attributes.update((f"konsilium.privacy.redacted.{kind}", count) for kind, count in redacted.items())
            self._span = tracer().start_span(f"{operation} {target}", kind=SpanKind.CLIENT, attributes=attributes)
        self._target, self._metrics, self._record = target, metrics, current()
        self.records_text = settings.record_content
        self._text: list[str] = []
        self._first_at = 0.0

    def first(self) -> None:
        self._first_at = time.perf_counter()
        record = self._record
        if record.ttft_ms is None:  # a council's calls share its record: the first token is the first one
            record.ttft_ms = (self._first_at - record.started) * 1000
        self._span.add_event("first_token")  # its timestamp is the first token's time
        if self._metrics is not None:
            self._metrics.first_token(self._target, self._first_at - record.started)

    def text(self, text: str) -> None:
        self._text.append(text)

    def finished(self, finish: Finish) -> None:
        text = "".join(self._text) if self.records_text else None
        if text is not None:
            self._record.answer = text
        _finished(self._span, self._record, self._target, finish, text)
        if self._metrics is not None:
            usage = finish.usage
            self._metrics.finished(
                self._target, usage.prompt_tokens, usage.completion_tokens, time.perf_counter() - self._first_at
            )

    def failed(self, error: GatewayError) -> None:
        self._record.error = error.code
        self._span.set_attribute("error.type", error.code)
        self._span.set_status(Status(StatusCode.ERROR, error.message[:200]))

    def end(self) -> None:
        self._span.end()


def note_redacted(metrics: Metrics | None, redacted: Mapping[str, int]) -> None:
    """What the privacy filter replaced for this request, into its record and the metrics."""
    if not redacted:
        return
    record = current()
    for kind, count in redacted.items():
        record.redacted[kind] = record.redacted.get(kind, 0) + count
    if metrics is not None:
        metrics.redacted(redacted)


@contextmanager
def embedding_span(model: str, inputs: int) -> Iterator[trace.Span]:
    """An embeddings call's GenAI client span (`embeddings {model}`), current while it runs."""
    if not recording():
        yield INVALID_SPAN
        return
    attributes: dict[str, str | int] = {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": "konsilium",
                  "gen_ai.request.model": model, "konsilium.embeddings.inputs": inputs}  # fmt: skip
    with tracer().start_as_current_span(f"embeddings {model}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def embedded(span: trace.Span, metrics: Metrics | None, answer: Embedded) -> None:
    """An embeddings answer: the model and its tokens into the request's record (the access log,
    the key's usage), the span and the token metric."""
    record, tokens = current(), answer.embeddings.prompt_tokens
    record.model, record.prompt_tokens = answer.target, tokens
    note_redacted(metrics, answer.redacted)
    span.set_attributes({"gen_ai.response.model": answer.target, "gen_ai.usage.input_tokens": tokens})
    if metrics is not None:
        metrics.tokens.inc((answer.target, "input"), tokens)


def route_attributes(role: RoleDecision, decision: RouteDecision) -> dict[str, str | list[str]]:
    """Lists only when not empty (each attribute costs the SDK a check per element)."""
    attributes: dict[str, str | list[str]] = {
        "konsilium.role": role.role,
        "konsilium.role.source": role.source,
        "konsilium.language": role.language,
        "konsilium.target": decision.target or "",
        "konsilium.route.reason": decision.reason,
    }
    lists = (("konsilium.matched", list(role.matched)), ("konsilium.fallbacks", list(decision.fallbacks)),
             ("konsilium.skipped", [f"{s.target}: {s.why}" for s in decision.skipped]))  # fmt: skip
    attributes.update((name, values) for name, values in lists if values)
    return attributes


def _request_attributes(
    operation: str, target: str, generation: GenerationRequest, settings: TelemetryConfig
) -> dict[str, str | int | float]:
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "konsilium",
        "gen_ai.request.model": target,
    }
    for key, value in (("max_tokens", generation.max_tokens), ("temperature", generation.temperature),
                       ("top_p", generation.top_p)):  # fmt: skip
        if value is not None:
            attributes[f"gen_ai.request.{key}"] = value
    if settings.record_content:  # opt-in only: prompts can hold anything
        messages = [{"role": m.role, "content": m.content} for m in generation.messages]
        attributes["gen_ai.input.messages"] = json.dumps(messages or [{"role": "user", "content": generation.prompt}])
    return attributes


def prompt_text(generation: GenerationRequest) -> str:
    """What the caller asked: the last user message, else a completion's prompt."""
    asked = next((m.content for m in reversed(generation.messages) if m.role == "user"), None)
    return generation.prompt if asked is None else asked


def _finished(span: trace.Span, record: RequestRecord, target: str, finish: Finish, text: str | None) -> None:
    record.prompt_tokens, record.completion_tokens = finish.usage.prompt_tokens, finish.usage.completion_tokens
    span.set_attributes({
        "gen_ai.response.model": target,
        "gen_ai.response.finish_reasons": [finish.reason],
        "gen_ai.usage.input_tokens": finish.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": finish.usage.completion_tokens,
    })  # fmt: skip
    if text is not None:
        span.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": text}]))
