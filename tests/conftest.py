"""Shared fixtures: one real Konsilium serving SmolLM2 for the SDK tests, and a session-wide
OpenTelemetry SDK provider that records every span into memory.

The global tracer provider can be set once per process, and an app built without an OTLP
endpoint would install one that records nothing (no exporter, nothing to read the spans). The
in-process tests want to read spans, so the recording provider goes in first and every app
built in this process reuses it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.servers import Server, llama_model, run_server

SPANS = InMemorySpanExporter()


@pytest.fixture(scope="session", autouse=True)
def recording_tracer_provider() -> Iterator[InMemorySpanExporter]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    yield SPANS
    provider.shutdown()


@pytest.fixture(scope="session", autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads the keys of whoever runs the suite (~/.local/share/konsilium/keys.sqlite):
    every app and server started here, in-process or as a child, keeps its keys in a temporary
    directory unless its config names another."""
    before = os.environ.get("KONSILIUM_DATA_DIR")
    os.environ["KONSILIUM_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    yield
    if before is None:
        del os.environ["KONSILIUM_DATA_DIR"]
    else:
        os.environ["KONSILIUM_DATA_DIR"] = before


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real Konsilium process serving the real SmolLM2 through a llama.cpp worker."""
    with run_server(tmp_path_factory.mktemp("main"), [llama_model()]) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk
