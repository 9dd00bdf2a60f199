"""vLLM as an embedding server: a managed vLLM 0.32 for CPUs serving the Hugging Face copy of
SmolLM2 as a pooling model (`embedding: true` starts it with `--runner pooling`; vLLM converts
the causal LM itself: last-token pooling, normalised), behind Konsilium's `/v1/embeddings`.

Real parts only (`make vllm-env` builds them); it never skips. vLLM computes in bfloat16 here,
so vectors are compared within a tolerance, not bit for bit (the llama.cpp worker's are:
tests/test_e2e_embeddings.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy
import pytest

from tests.openapi import assert_valid
from tests.servers import ROOT, Server, run_server
from tests.test_keys import error

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
ASSETS = ROOT / ".cache" / "vllm"
MODEL = "smol-vllm-embed"
TEXTS = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue fell by four percent."]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not VLLM_PYTHON.is_file() or not (ASSETS / ".built").is_file():
        pytest.fail("the vLLM environment is missing: run `make vllm-env` (make test does it first)")
    model = {
        "id": MODEL, "format": "hf", "path": str(ASSETS / "smollm2-135m-hf"), "python": str(VLLM_PYTHON),
        "embedding": True, "n_ctx": 512, "max_concurrency": 4, "load_timeout_s": 600, "stop_grace_s": 10,
        "vllm_args": ["--dtype", "bfloat16"], "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    }  # fmt: skip
    with run_server(tmp_path_factory.mktemp("vllm-embed"), [model], memory_budget_mb=8000) as server:
        yield server


def embed(server: Server, inputs: Any, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "input": inputs, **fields}
    return httpx.post(f"{server.v1}/embeddings", json=body, timeout=620)  # the first one starts vLLM


def vectors(reply: httpx.Response) -> list[numpy.ndarray[tuple[int], numpy.dtype[numpy.float32]]]:
    assert reply.status_code == 200, reply.text
    assert_valid("CreateEmbeddingResponse", reply.json())
    return [numpy.array(d["embedding"], dtype=numpy.float32) for d in reply.json()["data"]]


def test_a_pooling_model_on_vllm_gives_one_unit_vector_per_text(served: Server) -> None:
    reply = embed(served, TEXTS)
    batch = vectors(reply)
    assert (reply.headers["x-konsilium-model"], reply.json()["model"]) == (MODEL, MODEL)
    assert [v.shape for v in batch] == [(576,)] * 3
    assert all(abs(float(numpy.linalg.norm(v)) - 1.0) < 1e-3 for v in batch)
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > len(TEXTS)
    alone = [vectors(embed(served, text))[0] for text in TEXTS]
    assert all(float(a @ b) > 0.999 for a, b in zip(alone, batch, strict=True))  # bfloat16: near, not equal
    assert float(batch[0] @ batch[1]) > float(batch[0] @ batch[2])
    encoded = embed(served, TEXTS[0], encoding_format="base64").json()["data"][0]["embedding"]
    assert isinstance(encoded, str)


def test_what_vllm_cannot_do_is_refused_before_it_is_asked(served: Server) -> None:
    shorter = embed(served, "x", dimensions=8)
    assert (shorter.status_code, shorter.json()["error"]["param"]) == (400, "dimensions")
    hello = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    chat = httpx.post(f"{served.v1}/chat/completions", json=hello, timeout=60)
    assert (chat.status_code, chat.json()) == (
        400,
        error("unsupported_model", f"The model {MODEL!r} is an embedding model: it answers POST /v1/embeddings only.",
              "model"),
    )  # fmt: skip
