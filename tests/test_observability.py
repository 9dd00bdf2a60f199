"""Traces, metrics and logs of real requests: the app in-process (so the SDK's in-memory span
exporter sees its spans), SmolLM2 in a real llama.cpp worker, and a remote target on a port
nobody listens on (connection refused: the fallback's reason)."""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from litestar.testing import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.app import create_app
from konsilium.config import Config, RoleRoute, RoutingConfig, TargetRef, TelemetryConfig
from konsilium.manifest import Manifest
from konsilium.observability.logs import JsonFormatter
from tests.servers import ROOT, SMOLLM2, free_port, llama_model, run_server

pytestmark = pytest.mark.e2e

ASK_QA = {"model": "auto", "messages": [{"role": "user", "content": "покрой тестами модуль оплаты"}],
          "max_tokens": 4, "temperature": 0, "stream": True}  # fmt: skip


@pytest.fixture(scope="module")
def exporter(recording_tracer_provider: InMemorySpanExporter) -> InMemorySpanExporter:
    """The session's in-memory exporter (tests/conftest.py), emptied for this module."""
    recording_tracer_provider.clear()
    return recording_tracer_provider


@pytest.fixture(scope="module")
def client(exporter: InMemorySpanExporter) -> Iterator[TestClient[Any]]:
    config = Config(
        models=[
            Manifest(id="dead", format="remote", url=f"http://127.0.0.1:{free_port()}/v1", connect_timeout_s=2),
            Manifest(id="smol", path=str(SMOLLM2), n_ctx=512, load="on_demand", max_concurrency=1),
        ],
        memory_budget_mb=2000,
        routing=RoutingConfig(roles={"qa": RoleRoute(targets=[TargetRef(model="dead"), TargetRef(model="smol")])}),
        telemetry=TelemetryConfig(tracing=True, metrics=True),
    )
    with TestClient(app=create_app(config)) as test_client:
        yield test_client


def finished_spans(exporter: InMemorySpanExporter, trace_id: str) -> dict[str, ReadableSpan]:
    """The trace's spans by name, once its server span has ended (it ends after the last byte)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
        if any(s.kind == SpanKind.SERVER for s in spans):
            return {s.name: s for s in spans}
        time.sleep(0.05)
    raise AssertionError(f"no server span for trace {trace_id}")


def test_a_routed_streamed_request_with_a_fallback_and_a_load_is_one_trace(
    client: TestClient[Any], exporter: InMemorySpanExporter
) -> None:
    with client.stream("POST", "/v1/chat/completions", json=ASK_QA) as reply:
        body = reply.read().decode()
    assert reply.status_code == 200, body
    assert reply.headers["x-konsilium-fallbacks"] == "dead"
    trace_id = reply.headers["x-konsilium-trace-id"]
    spans = finished_spans(exporter, trace_id)
    assert set(spans) == {"POST /v1/chat/completions", "route", "model load", "chat dead", "chat smol"}
    server = spans["POST /v1/chat/completions"]
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    for name, span in spans.items():
        if name != server.name:
            assert span.parent is not None
            assert span.parent.span_id == server.context.span_id, f"{name} hangs under the request's span"

    route = spans["route"].attributes
    assert route is not None
    assert (route["konsilium.role"], route["konsilium.language"], route["konsilium.target"]) == ("qa", "ru", "dead")
    assert list(route["konsilium.fallbacks"]) == ["smol"]  # type: ignore[arg-type]
    assert "покр тест" in list(route["konsilium.matched"])  # type: ignore[arg-type]

    failed = spans["chat dead"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "model_unavailable"

    answered = spans["chat smol"]
    attributes = answered.attributes
    assert attributes is not None
    assert answered.kind == SpanKind.CLIENT
    assert (attributes["gen_ai.operation.name"], attributes["gen_ai.request.model"]) == ("chat", "smol")
    assert (attributes["gen_ai.response.model"], attributes["gen_ai.request.max_tokens"]) == ("smol", 4)
    assert attributes["gen_ai.usage.output_tokens"] == 4
    assert int(attributes["gen_ai.usage.input_tokens"]) > 10  # type: ignore[arg-type]
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["length"]  # type: ignore[arg-type]
    assert "gen_ai.input.messages" not in attributes, "prompts are recorded only when asked for"
    assert [e.name for e in answered.events] == ["first_token"]

    load = spans["model load"].attributes
    assert load is not None
    assert load["gen_ai.request.model"] == "smol"
    assert spans["model load"].start_time < answered.events[0].timestamp  # type: ignore[operator]


def test_a_request_that_waits_for_the_model_has_a_queue_wait_span(
    client: TestClient[Any], exporter: InMemorySpanExporter
) -> None:
    """smol serves one request at a time: the second of two concurrent requests queues."""
    long = {**ASK_QA, "model": "smol", "stream": False, "max_tokens": 48}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(client.post, "/v1/chat/completions", json=long)
        store = client.app.state.services.store
        deadline = time.monotonic() + 30
        while store.view_of("smol").in_flight == 0:  # the first holds the slot
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.01)
        second = pool.submit(client.post, "/v1/chat/completions", json={**long, "max_tokens": 2})
        replies = [first.result(timeout=60), second.result(timeout=60)]
    assert [r.status_code for r in replies] == [200, 200]
    waited = finished_spans(exporter, replies[1].headers["x-konsilium-trace-id"])
    assert set(waited) == {"POST /v1/chat/completions", "route", "queue wait", "chat smol"}
    queue = waited["queue wait"]
    assert queue.parent is not None
    assert queue.parent.span_id == waited["POST /v1/chat/completions"].context.span_id
    assert queue.attributes is not None
    assert (queue.attributes["gen_ai.request.model"], queue.attributes["konsilium.queue.ahead"]) == ("smol", 1)
    assert queue.end_time is not None
    assert queue.start_time is not None
    assert queue.end_time <= waited["chat smol"].events[0].timestamp


def scrape(client: TestClient[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_real_requests(client: TestClient[Any]) -> None:
    before = scrape(client)
    answer = client.post("/v1/chat/completions", json={**ASK_QA, "stream": False})
    assert answer.status_code == 200
    refused = client.post("/v1/chat/completions", json={"model": "auto", "messages": []})
    assert refused.status_code == 400
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("konsilium_requests_total", model="smol", role="qa", status="200", stream="false") == 1
    assert moved("konsilium_requests_total", model="", role="", status="400", stream="false") == 1
    assert moved("konsilium_fallbacks_total", target="dead", error="model_unavailable") == 1
    assert moved("konsilium_routing_decisions_total", role="qa", source="classifier", language="ru") == 1
    assert moved("konsilium_time_to_first_token_seconds_count", model="smol") == 1
    assert moved("konsilium_time_per_output_token_seconds_count", model="smol") == 1
    assert moved("konsilium_request_duration_seconds_count", model="smol", stream="false") == 1
    assert (
        moved("konsilium_tokens_total", model="smol", direction="output") == answer.json()["usage"]["completion_tokens"]
    )
    assert moved("konsilium_tokens_total", model="smol", direction="input") == answer.json()["usage"]["prompt_tokens"]
    assert moved("konsilium_queue_wait_seconds_count", model="smol") == 1
    assert value(after, "konsilium_model_loads_total", model="smol", outcome="ok") == 1
    assert value(after, "konsilium_model_load_duration_seconds_count", model="smol") == 1
    assert value(after, "konsilium_model_state", model="smol", state="ready") == 1
    assert value(after, "konsilium_model_state", model="smol", state="unloaded") == 0
    assert value(after, "konsilium_queue_depth", model="smol") == 0
    assert value(after, "konsilium_memory_budget_bytes") == 2000 * 1024 * 1024
    assert value(after, "konsilium_model_memory_bytes", model="smol") > 50 * 1024 * 1024
    assert value(after, "konsilium_memory_used_bytes") == value(after, "konsilium_model_memory_bytes", model="smol")
    assert value(after, "konsilium_breaker_state", target="dead") == 0  # two failures of three: still closed


def test_one_json_access_line_per_request(client: TestClient[Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="konsilium.access"):
        reply = client.post("/v1/chat/completions", json={**ASK_QA, "stream": False}, headers={"x-request-id": "r-42"})
    [record] = [r for r in caplog.records if r.name == "konsilium.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /v1/chat/completions 200"
    assert (line["level"], line["logger"], line["request_id"]) == ("info", "konsilium.access", "r-42")
    assert line["trace_id"] == reply.headers["x-konsilium-trace-id"]
    assert (line["role"], line["model"], line["status"], line["stream"]) == ("qa", "smol", 200, False)
    assert line["fallbacks"] == ["dead"]
    assert line["completion_tokens"] == reply.json()["usage"]["completion_tokens"]
    assert line["duration_ms"] >= line["ttft_ms"] > 0
    assert "покрой" not in json.dumps(line, ensure_ascii=False), "no prompt text in logs"


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: what an OpenTelemetry collector does with a trace export, no more."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            Collector.received.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(ExportTraceServiceResponse().SerializeToString())

    def log_message(self, *args: object) -> None:
        pass


def test_spans_are_exported_over_otlp_when_an_endpoint_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s, not 5 s
    telemetry = {"otlp_endpoint": f"http://127.0.0.1:{receiver.server_address[1]}", "service_name": "konsilium-test"}
    try:
        with run_server(tmp_path, [llama_model("smol", n_ctx=512)], telemetry=telemetry) as server:
            reply = httpx.post(f"{server.v1}/chat/completions", json={**ASK_QA, "model": "smol", "stream": False})
            assert reply.status_code == 200
            trace_id = bytes.fromhex(reply.headers["x-konsilium-trace-id"])
            deadline = time.monotonic() + 10
            names: set[str] = set()
            while "POST /v1/chat/completions" not in names and time.monotonic() < deadline:
                time.sleep(0.1)
                names = exported_span_names(trace_id)
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert {"POST /v1/chat/completions", "route", "chat smol"} <= names


def exported_span_names(trace_id: bytes) -> set[str]:
    names = set()
    for body in list(Collector.received):
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            assert service == "konsilium-test"
            names |= {s.name for scope in resource_spans.scope_spans for s in scope.spans if s.trace_id == trace_id}
    return names


@pytest.mark.parametrize("record_content", [False, True])
def test_prompts_reach_spans_only_when_asked_for(record_content: bool) -> None:
    from gateway.observe import _request_attributes
    from model_store.types import GenerationRequest, Message

    generation = GenerationRequest(kind="chat", messages=(Message(role="user", content="секрет"),), max_tokens=8)
    attributes = _request_attributes("chat", "smol", generation, TelemetryConfig(record_content=record_content))
    assert attributes["gen_ai.request.max_tokens"] == 8
    if record_content:
        assert json.loads(str(attributes["gen_ai.input.messages"])) == [{"role": "user", "content": "секрет"}]
    else:
        assert "gen_ai.input.messages" not in attributes


def test_the_grafana_dashboard_reads_only_metrics_we_expose(client: TestClient[Any]) -> None:
    dashboard = json.loads((ROOT / "grafana" / "konsilium.json").read_text(encoding="utf-8"))
    queried = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"konsilium_[a-z_]+", target["expr"])
    }
    exposed = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    exposed |= {f"{name}_total" for name in exposed}  # the parser names counters without `_total`
    assert queried - exposed == set()
    assert len(dashboard["panels"]) == 15


def test_every_answer_carries_a_trace_id_and_a_callers_trace_is_continued(tmp_path: Path) -> None:
    """The default: no exporter, so spans are not recorded, but trace ids still flow."""
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    with run_server(tmp_path, [llama_model("smol", n_ctx=512)]) as server:
        own = httpx.post(f"{server.v1}/chat/completions", json={**ASK_QA, "model": "smol", "stream": False})
        continued = httpx.post(
            f"{server.v1}/chat/completions",
            json={**ASK_QA, "model": "smol", "stream": False},
            headers={"traceparent": f"00-{caller}-00f067aa0ba902b7-01"},
        )
        refused = httpx.post(f"{server.v1}/chat/completions", json={"model": "smol", "messages": []})
    assert re.fullmatch(r"[0-9a-f]{32}", own.headers["x-konsilium-trace-id"])
    assert own.headers["x-konsilium-trace-id"] != caller
    assert continued.headers["x-konsilium-trace-id"] == caller
    assert refused.status_code == 400
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-konsilium-trace-id"]), "errors carry one too"
