"""OpenTelemetry set-up: one SDK `TracerProvider` per process, an OTLP exporter only when asked.

Code everywhere else only uses the API (`trace.get_tracer(...)`): with tracing off no SDK
provider is installed and every span is a no-op. With tracing on and no endpoint, spans carry
trace ids (returned in `x-konsilium-trace-id`) but are not recorded: nothing could read them.
Span and attribute names follow the GenAI semantic conventions where they exist:
`chat {model}` spans with `gen_ai.request.model`, `gen_ai.response.model`,
`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from konsilium.config import TelemetryConfig

log = logging.getLogger(__name__)

TRACER_NAME = "konsilium"
# A proxy that finds the SDK provider once it is installed; asking `get_tracer` per span would
# build a new SDK tracer every time (measured: ~45 us a call, most of tracing's cost).
_TRACER = trace.get_tracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    return _TRACER


def setup_tracing(settings: TelemetryConfig) -> TracerProvider | None:
    """Install the SDK provider (or reuse one already installed, as tests do with an in-memory
    exporter) and, when an endpoint is configured, a batching OTLP/HTTP exporter.

    With no endpoint nothing could ever read a span, so none is recorded: every request still
    gets its trace id (continued from a caller's `traceparent`), for the response header and
    the log line, at a fraction of the cost (measured: a recorded SDK span costs ~25 us of CPU
    in the server, three per request)."""
    if not settings.tracing:
        return None
    endpoint = settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        resource = Resource.create({"service.name": settings.service_name})
        provider = TracerProvider(resource=resource, sampler=_sampler(settings, exporting=bool(endpoint)))
        trace.set_tracer_provider(provider)
    if endpoint:
        provider.add_span_processor(_otlp(endpoint))
        log.info("exporting traces over OTLP/HTTP to %s", endpoint)
    return provider


def _sampler(settings: TelemetryConfig, *, exporting: bool) -> Sampler:
    if not exporting:
        return ALWAYS_OFF
    return ParentBased(ALWAYS_ON if settings.sample_ratio >= 1 else TraceIdRatioBased(settings.sample_ratio))


def _otlp(endpoint: str) -> SpanProcessor:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = endpoint.rstrip("/")
    return BatchSpanProcessor(OTLPSpanExporter(endpoint=base if base.endswith("/v1/traces") else f"{base}/v1/traces"))


def trace_id(span: trace.Span) -> str:
    """The W3C trace id, 32 hex digits ("" for a no-op span)."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""
