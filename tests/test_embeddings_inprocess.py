"""`POST /v1/embeddings` in process, with scripted backends (tests/scripted.py): the kinds of model
kept apart (routing never sends a chat to an embedding model, nor vectors to a chat model), the
key's allow-list and limits, the cloud rules, the store's queue. The real vectors of a real
llama.cpp worker are tests/test_e2e_embeddings.py's."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest

from konsilium.manifest import Manifest
from model_store.types import EmbeddingRequest
from tests.scripted import ScriptedBackend
from tests.test_inprocess import ask, model, serving, wait_until
from tests.test_keys import add, bearer, error

CHAT, VECTORS, SHORTER = "chat", "vectors", "shorter"


def embeddable() -> dict[str, ScriptedBackend]:
    return {name: ScriptedBackend(name) for name in (CHAT, VECTORS, SHORTER)}


def manifests(**cloud: Any) -> list[Manifest]:
    return [
        model(CHAT),
        model(VECTORS, embedding=True),
        model(SHORTER, embedding=True, matryoshka=True, **cloud),
    ]


def embed(target: str = VECTORS, **fields: Any) -> dict[str, Any]:
    return {"model": target, "input": "hello", **fields}


async def test_vectors_come_back_in_openais_shape_and_usage_is_the_backends() -> None:
    backends = embeddable()
    async with serving(backends, models=manifests()) as (client, _):
        reply = await client.post("/v1/embeddings", json=embed(input=["a", "b"], user="u-1"))
        assert (reply.status_code, reply.headers["x-konsilium-model"]) == (200, VECTORS)
        assert reply.json() == {
            "object": "list",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.6000000238418579, 0.800000011920929]},
                {"object": "embedding", "index": 1, "embedding": [0.6000000238418579, 0.800000011920929]},
            ],
            "model": VECTORS,
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
        base64 = await client.post("/v1/embeddings", json=embed(encoding_format="base64"))
        assert base64.json()["data"][0]["embedding"] == "mpkZP83MTD8="  # 0.6f, 0.8f little-endian
        assert backends[VECTORS].embedded == [
            EmbeddingRequest(texts=("a", "b")),
            EmbeddingRequest(texts=("hello",)),
        ]
        assert backends[VECTORS].loads == 1
        assert backends[CHAT].loads == 0  # nothing else was touched


async def test_each_kind_of_model_answers_its_own_endpoint_only() -> None:
    backends = embeddable()
    async with serving(backends, models=manifests()) as (client, _):
        chat = await client.post("/v1/chat/completions", json=ask(VECTORS))
        assert chat.status_code == 400
        assert chat.json() == error(
            "unsupported_model",
            "The model 'vectors' is an embedding model: it answers POST /v1/embeddings only.",
            "model",
        )
        vectors = await client.post("/v1/embeddings", json=embed(CHAT))
        assert vectors.status_code == 400
        assert vectors.json() == error(
            "unsupported_model",
            "The model 'chat' does not create embeddings (its manifest has no `embedding: true`).",
            "model",
        )
        routed = await client.post("/v1/embeddings", json=embed("auto"))
        assert routed.json() == error(
            "invalid_request", "An embeddings request names its model: 'auto' routes text generation only.", "model"
        )
        unknown = await client.post("/v1/embeddings", json=embed("nobody"))
        assert (unknown.status_code, unknown.json()) == (
            404,
            error("model_not_found", "The model 'nobody' does not exist.", "model"),
        )
        assert backends[VECTORS].requests == backends[CHAT].embedded == []


async def test_auto_routing_never_picks_an_embedding_model() -> None:
    """Embedding models first in tier order, the lightweight one idle beside a busy chat model:
    a generation still goes to the chat model, and no decision or skip names the others."""
    backends = embeddable()
    models = [
        model(VECTORS, embedding=True, role="primary", load="eager"),
        model(SHORTER, embedding=True, role="lightweight"),
        model(CHAT, role="micro"),
    ]
    async with serving(backends, models=models) as (client, _):
        reply = await client.post("/v1/chat/completions", json=ask("auto", max_tokens=8))
        assert (reply.status_code, reply.headers["x-konsilium-model"]) == (200, CHAT)
        assert reply.headers["x-konsilium-fallbacks"] == ""
        explained = await client.post("/admin/route", json=ask("auto"))
        assert (explained.json()["target"]["model"], explained.json()["skipped"]) == (CHAT, [])
        assert explained.json()["fallbacks"] == []
        assert backends[VECTORS].requests == backends[SHORTER].requests == []


async def test_dimensions_only_where_the_manifest_allows_them() -> None:
    backends = embeddable()
    async with serving(backends, models=manifests()) as (client, _):
        refused = await client.post("/v1/embeddings", json=embed(dimensions=1))
        assert refused.status_code == 400
        assert refused.json() == error(
            "unsupported_parameter",
            "The model 'vectors' does not take `dimensions`: its vectors are not trained to be cut shorter "
            "(a Matryoshka model's manifest says `matryoshka: true`).",
            "dimensions",
        )
        assert backends[VECTORS].loads == 0  # refused before anything loaded
        taken = await client.post("/v1/embeddings", json=embed(SHORTER, dimensions=1))
        assert taken.status_code == 200
        assert backends[SHORTER].embedded == [EmbeddingRequest(texts=("hello",), dimensions=1)]


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"model": VECTORS}, "Missing required parameter: 'input'.", "input"),
        ({"input": "x"}, "Missing required parameter: 'model'.", "model"),
        (embed(input=""), "'input' cannot be an empty string: there is nothing to embed.", "input"),
        (embed(input=[]), "'input' cannot be an empty array: give at least one text.", "input"),
        (embed(input=["a", ""]), "'input[1]' cannot be an empty string: there is nothing to embed.", "input[1]"),
        (embed(input=["a", 1]), "Invalid type for 'input[1]': expected a string, as input[0] is.", "input[1]"),
        (embed(input=[[1], []]), "'input[1]' must be a non-empty array of token ids, as input[0] is.", "input[1]"),
        (
            embed(input=[1, -2]),
            "Invalid value for 'input[1]': a token id is a whole number from 0 to 2147483647.",
            "input[1]",
        ),
        (
            embed(input=[[1, True]]),
            "Invalid value for 'input[0][1]': a token id is a whole number from 0 to 2147483647.",
            "input[0][1]",
        ),
        (
            embed(input={"text": "x"}),
            "Invalid type for 'input': expected a string, an array of strings, an array of token ids or an array "
            "of token-id arrays.",
            "input",
        ),
        (embed(input=["x"] * 2049), "'input' holds 2049 items: at most 2048 in one request.", "input"),
        (embed(input=[[1] * 150_001, [2] * 150_000]), "'input' holds 300001 tokens: at most 300000 in one request.",
         "input"),
        (embed(encoding_format="binary"), "Invalid value for 'encoding_format': Invalid enum value 'binary'",
         "encoding_format"),
        (embed(dimensions=0), "Invalid value for 'dimensions': Expected `int` >= 1", "dimensions"),
    ],
)  # fmt: skip
async def test_invalid_requests_name_the_parameter(body: dict[str, Any], message: str, param: str) -> None:
    backends = embeddable()
    async with serving(backends, models=manifests()) as (client, _):
        reply = await client.post("/v1/embeddings", json=body)
        assert reply.status_code == 400
        assert reply.json() == error("invalid_request", message, param)
        assert backends[VECTORS].embedded == []


async def test_a_key_reaches_only_its_models_and_is_charged_the_inputs_tokens(tmp_path: Path) -> None:
    _, chat_only = add(tmp_path, "chat-only", models=[CHAT])
    _, vectors_only = add(tmp_path, "vectors", models=[VECTORS])
    _, small = add(tmp_path, "small", tpm=5)
    _, admin = add(tmp_path, "ops", admin=True)
    backends = embeddable()
    async with serving(backends, models=manifests(), data_dir=str(tmp_path)) as (client, _):
        hidden = await client.post("/v1/embeddings", json=embed(), headers=bearer(chat_only))
        assert (hidden.status_code, hidden.json()) == (
            404,
            error("model_not_found", "The model 'vectors' does not exist.", "model"),
        )
        listed = (await client.get("/v1/models", headers=bearer(vectors_only))).json()["data"]
        assert [m["id"] for m in listed if m["owned_by"] != "konsilium"] == [VECTORS]
        for _ in range(2):
            reply = await client.post("/v1/embeddings", json=embed(input=["a", "b"]), headers=bearer(vectors_only))
            assert reply.status_code == 200
        too_large = await client.post("/v1/embeddings", json=embed(input="x" * 60), headers=bearer(small))
        assert too_large.status_code == 429
        assert too_large.json()["error"]["message"].startswith("Request too large for key 'small'")
        listing = (await client.get("/admin/keys", headers=bearer(admin))).json()["keys"]
        usage = next(k["usage"] for k in listing if k["name"] == "vectors")
        assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 8, 0)
        metrics = (await client.get("/metrics", headers=bearer(admin))).text
        assert 'konsilium_tokens_total{direction="input",model="vectors"} 8.0' in metrics
        assert 'konsilium_requests_total{model="vectors",role="",status="200",stream="false"} 2.0' in metrics
        assert backends[VECTORS].embedded == [EmbeddingRequest(texts=("a", "b"))] * 2


def cloud_vectors() -> list[Manifest]:
    return [model(CHAT), Manifest(id="cloud", format="remote", url="http://127.0.0.1:9/v1", cloud=True, embedding=True)]


async def test_a_cloud_embedding_model_needs_consent_and_gets_the_texts_scrubbed() -> None:
    backends = {CHAT: ScriptedBackend(CHAT), "cloud": ScriptedBackend("cloud")}
    async with serving(backends, models=cloud_vectors(), allow_external_api=True) as (client, _):
        mail = embed("cloud", input=["write to ivan@example.com", "no secrets"])
        refused = await client.post("/v1/embeddings", json=mail)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "cloud_consent_required"
        consent = {"x-konsilium-cloud-consent": "1"}
        reply = await client.post("/v1/embeddings", json=mail, headers=consent)
        assert reply.status_code == 200
        assert backends["cloud"].embedded == [EmbeddingRequest(texts=("write to <EMAIL_1>", "no secrets"))]
        tokens = await client.post("/v1/embeddings", json=embed("cloud", input=[5, 6]), headers=consent)
        assert tokens.json() == error(
            "invalid_request",
            "Token ids cannot pass the privacy filter on their way to a cloud model: send the texts.",
            "input",
        )


async def test_a_cloud_embedding_model_is_refused_while_external_apis_are_off() -> None:
    backends = {CHAT: ScriptedBackend(CHAT), "cloud": ScriptedBackend("cloud")}
    async with serving(backends, models=cloud_vectors()) as (client, _):
        reply = await client.post("/v1/embeddings", json=embed("cloud"), headers={"x-konsilium-cloud-consent": "1"})
        assert reply.status_code == 503
        assert reply.json()["error"]["message"] == (
            "no target can serve this request: cloud: cloud target; allow_external_api is off"
        )
        assert backends["cloud"].embedded == []


async def test_embeddings_wait_in_the_models_queue_and_a_full_queue_is_a_429() -> None:
    gate = asyncio.Event()
    backends = embeddable()
    backends[VECTORS].embed_gate = gate
    models = [model(CHAT), model(VECTORS, embedding=True, max_concurrency=1, max_queue=1)]
    async with serving(backends, models=models) as (client, services):
        first = asyncio.ensure_future(client.post("/v1/embeddings", json=embed()))
        second = asyncio.ensure_future(client.post("/v1/embeddings", json=embed()))
        await wait_until(lambda: services.store.view_of(VECTORS).queued == 1)
        full = await client.post("/v1/embeddings", json=embed())
        assert (full.status_code, full.json()["error"]["code"]) == (429, "rate_limit_exceeded")
        gate.set()
        assert [(await first).status_code, (await second).status_code] == [200, 200]
        assert struct.unpack("<2f", struct.pack("<2f", 0.6, 0.8)) == tuple((await first).json()["data"][0]["embedding"])
