from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.servers import Server, llama_model, run_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real Konsilium process serving the real SmolLM2 through a llama.cpp worker."""
    with run_server(tmp_path_factory.mktemp("main"), [llama_model()]) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk
