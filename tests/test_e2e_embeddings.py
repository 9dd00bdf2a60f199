"""`POST /v1/embeddings` end to end: a real Konsilium process, the packaged SmolLM2 GGUF as an
embedding model in a real llama.cpp worker, a second Konsilium relaying to it through the
`openai` backend (with API keys on), and the official openai SDK. Bodies are validated against
OpenAI's published schemas (tests/data/openai/)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy
import openai
import pytest

from model_store.gguf_header import read_header
from tests.openapi import assert_valid
from tests.servers import MODEL_ID, SMOLLM2, Server, llama_model, run_server
from tests.test_keys import add, bearer, error

pytestmark = pytest.mark.e2e

EMBED = "smol-embed"  # Matryoshka-allowed, so `dimensions` can be tried on it
FIXED = "smol-embed-fixed"  # the same file without `matryoshka`: never loads in these tests
RELAYED = "relayed-embed"
N_CTX = 512
N_EMBD = int(read_header(SMOLLM2).metadata["llama.embedding_length"])  # 576
TEXTS = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue fell by four percent."]

Vector = numpy.ndarray[tuple[int], numpy.dtype[numpy.float32]]


def embedding_model(model_id: str, **options: object) -> dict[str, object]:
    return llama_model(model_id, embedding=True, n_ctx=N_CTX, **options)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = [
        llama_model(MODEL_ID, load="on_demand"),  # asked for vectors it refuses before loading
        embedding_model(EMBED, matryoshka=True),
        embedding_model(FIXED, load="on_demand"),
    ]
    with run_server(tmp_path_factory.mktemp("embeddings"), models) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    return LlamaModel(path_model=str(SMOLLM2), params=params, verbose=False)


def tokens(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    return ids


def post(server: Server, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{server.v1}/embeddings", json=body, headers=headers, timeout=120)


def vectors(reply: httpx.Response) -> list[Vector]:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert_valid("CreateEmbeddingResponse", body)
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    return [numpy.array(item["embedding"], dtype=numpy.float32) for item in body["data"]]


def embed(server: Server, inputs: Any, model: str = EMBED, **fields: Any) -> list[Vector]:
    body = {"model": model, "input": inputs, **fields}
    assert_valid("CreateEmbeddingRequest", body)
    return vectors(post(server, body))


def test_a_text_becomes_one_unit_vector_as_wide_as_the_model(served: Server, tokenizer: Any) -> None:
    reply = post(served, {"model": EMBED, "input": TEXTS[0]})
    [vector] = vectors(reply)
    body = reply.json()
    assert (reply.headers["x-konsilium-model"], body["model"], body["object"]) == (EMBED, EMBED, "list")
    assert body["data"][0]["object"] == "embedding"
    assert vector.shape == (N_EMBD,)
    assert abs(float(numpy.linalg.norm(vector)) - 1.0) < 1e-6
    count = len(tokens(tokenizer, TEXTS[0]))
    assert body["usage"] == {"prompt_tokens": count, "total_tokens": count}


def test_a_list_is_batched_and_every_text_keeps_its_own_vector(served: Server, tokenizer: Any) -> None:
    alone = [embed(served, text)[0] for text in TEXTS]
    reply = post(served, {"model": EMBED, "input": TEXTS})
    together = vectors(reply)
    assert [v.tobytes() for v in together] == [v.tobytes() for v in alone]  # bit for bit
    reversed_ = embed(served, TEXTS[::-1])
    assert [v.tobytes() for v in reversed_] == [v.tobytes() for v in alone[::-1]]
    assert len({v.tobytes() for v in alone}) == len(TEXTS)
    same, other = float(alone[0] @ alone[1]), float(alone[0] @ alone[2])
    assert same > other, (same, other)  # two cats on mats are nearer each other than revenue is
    counted = sum(len(tokens(tokenizer, t)) for t in TEXTS)
    assert reply.json()["usage"] == {"prompt_tokens": counted, "total_tokens": counted}


def test_concurrent_requests_get_the_vectors_each_gets_alone(served: Server) -> None:
    alone = [embed(served, text)[0].tobytes() for text in TEXTS]
    with ThreadPoolExecutor(len(TEXTS) * 2) as pool:
        answers = list(pool.map(lambda text: embed(served, text)[0].tobytes(), TEXTS * 2))
    assert answers == alone * 2


def test_token_ids_embed_as_the_text_they_spell(served: Server, tokenizer: Any) -> None:
    ids = [tokens(tokenizer, text) for text in TEXTS]
    from_text = embed(served, TEXTS)
    reply = post(served, {"model": EMBED, "input": ids})
    assert [v.tobytes() for v in vectors(reply)] == [v.tobytes() for v in from_text]
    assert reply.json()["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    [single] = embed(served, ids[0])  # one array of ids is one input
    assert single.tobytes() == from_text[0].tobytes()


def test_base64_carries_the_same_float32s(served: Server) -> None:
    floats = embed(served, TEXTS)
    reply = post(served, {"model": EMBED, "input": TEXTS, "encoding_format": "base64"})
    assert reply.status_code == 200
    body = reply.json()
    assert_valid("CreateEmbeddingResponse", {**body, "data": [{**d, "embedding": []} for d in body["data"]]})
    decoded = [numpy.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    assert [v.tobytes() for v in decoded] == [v.tobytes() for v in floats]


def test_dimensions_cut_the_vector_and_make_it_unit_length_again(served: Server) -> None:
    [whole] = embed(served, TEXTS[0])
    [short] = embed(served, TEXTS[0], dimensions=64)
    assert short.shape == (64,)
    assert abs(float(numpy.linalg.norm(short)) - 1.0) < 1e-6
    expected = whole[:64] / numpy.linalg.norm(whole[:64].astype(numpy.float64))
    assert numpy.allclose(short, expected, rtol=0, atol=1e-6)
    too_many = post(served, {"model": EMBED, "input": "x", "dimensions": N_EMBD + 1})
    assert (too_many.status_code, too_many.json()) == (
        400,
        error("invalid_request", f"dimensions: at most {N_EMBD} for this model (its vectors' length)", "dimensions"),
    )
    refused = post(served, {"model": FIXED, "input": "x", "dimensions": 64})
    assert (refused.status_code, refused.json()) == (
        400,
        error(
            "unsupported_parameter",
            f"The model {FIXED!r} does not take `dimensions`: its vectors are not trained to be cut shorter "
            "(a Matryoshka model's manifest says `matryoshka: true`).",
            "dimensions",
        ),
    )


def test_the_openai_sdk_creates_embeddings(served: Server) -> None:
    raw = embed(served, TEXTS)
    with openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=120) as client:
        default = client.embeddings.create(model=EMBED, input=TEXTS)  # the SDK asks for base64 and decodes it
        floats = client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="float", user="u-1")
    assert default.model == EMBED
    assert [numpy.array(d.embedding, dtype=numpy.float32).tobytes() for d in default.data] == [v.tobytes() for v in raw]
    assert numpy.array(floats.data[0].embedding, dtype=numpy.float32).tobytes() == raw[0].tobytes()
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0


def test_the_embedding_model_is_listed_and_loaded_by_its_requests_only(served: Server) -> None:
    listed = {m["id"]: m for m in httpx.get(f"{served.v1}/models", timeout=10).json()["data"]}
    assert (listed[EMBED]["state"], listed[EMBED]["context_length"]) == ("ready", N_CTX)
    assert (listed[FIXED]["state"], listed[MODEL_ID]["state"]) == ("unloaded", "unloaded")


def test_refusals_are_openai_shaped_400s_naming_the_parameter(served: Server, tokenizer: Any) -> None:
    chat = httpx.post(
        f"{served.v1}/chat/completions",
        json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert (chat.status_code, chat.json()) == (
        400,
        error("unsupported_model", f"The model {EMBED!r} is an embedding model: it answers POST /v1/embeddings only.",
              "model"),
    )  # fmt: skip
    assert_valid("ErrorResponse", chat.json())
    vectors_of_chat = post(served, {"model": MODEL_ID, "input": "hi"})
    assert (vectors_of_chat.status_code, vectors_of_chat.json()) == (
        400,
        error(
            "unsupported_model",
            f"The model {MODEL_ID!r} does not create embeddings (its manifest has no `embedding: true`).",
            "model",
        ),
    )
    empty = post(served, {"model": EMBED, "input": ["fine", ""]})
    assert (empty.status_code, empty.json()) == (
        400,
        error("invalid_request", "'input[1]' cannot be an empty string: there is nothing to embed.", "input[1]"),
    )
    missing = post(served, {"input": "hi"})
    assert missing.json() == error("invalid_request", "Missing required parameter: 'model'.", "model")
    long = "word " * 600
    count = len(tokens(tokenizer, long))
    too_long = post(served, {"model": EMBED, "input": ["short", long]})
    assert (too_long.status_code, too_long.json()) == (
        400,
        error(
            "context_length_exceeded",
            f"input[1] is {count} tokens long; this model embeds at most {N_CTX} tokens an input",
            "input[1]",
        ),
    )
    outside = post(served, {"model": EMBED, "input": [[1, 2, 10**6]]})
    assert (outside.status_code, outside.json()) == (
        400,
        error("invalid_request", "input: token ids go from 0 to 49151", "input"),
    )
    assert embed(served, "still fine")[0].shape == (N_EMBD,)  # the worker carries on


# ---- an openai upstream, and API keys --------------------------------------------------------


@pytest.fixture(scope="module")
def relay(served: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A second Konsilium whose embedding model is the first one's, through the `openai` backend,
    with API keys: one for the relayed model, one for another model only, an admin's."""
    tmp = tmp_path_factory.mktemp("relay")
    secrets = {name: add(tmp, name, **fields)[1] for name, fields in (
        ("vectors", {"models": [RELAYED]}), ("chat-only", {"models": ["relayed-chat"]}), ("ops", {"admin": True}),
    )}  # fmt: skip
    upstream = {"backend": "openai", "url": served.v1}
    models = [
        {"id": "relayed-chat", **upstream, "upstream_model": MODEL_ID},
        {"id": RELAYED, **upstream, "upstream_model": EMBED, "embedding": True, "matryoshka": True},
    ]
    with run_server(tmp, models, data_dir=str(tmp)) as running:
        yield running, secrets


def test_an_openai_upstream_relays_the_same_vectors(served: Server, relay: tuple[Server, dict[str, str]]) -> None:
    proxy, secrets = relay
    direct = post(served, {"model": EMBED, "input": TEXTS})
    relayed = post(proxy, {"model": RELAYED, "input": TEXTS}, authorization=f"Bearer {secrets['vectors']}")
    assert relayed.headers["x-konsilium-model"] == relayed.json()["model"] == RELAYED
    assert [v.tobytes() for v in vectors(relayed)] == [v.tobytes() for v in vectors(direct)]
    assert relayed.json()["usage"] == direct.json()["usage"]
    short = post(proxy, {"model": RELAYED, "input": TEXTS[0], "dimensions": 32}, **bearer(secrets["vectors"]))
    [cut] = vectors(short)
    assert cut.tobytes() == embed(served, TEXTS[0], dimensions=32)[0].tobytes()  # `dimensions` went upstream


def test_a_key_whose_models_exclude_the_embedding_model_is_refused_and_usage_is_counted(
    relay: tuple[Server, dict[str, str]], tokenizer: Any
) -> None:
    proxy, secrets = relay
    refused = post(proxy, {"model": RELAYED, "input": "hi"}, **bearer(secrets["chat-only"]))
    assert (refused.status_code, refused.json()) == (
        404,
        error("model_not_found", f"The model {RELAYED!r} does not exist.", "model"),
    )
    nobody = post(proxy, {"model": RELAYED, "input": "hi"})
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (401, "invalid_api_key")

    def usage() -> dict[str, Any]:
        keys = httpx.get(f"{proxy.base_url}/admin/keys", headers=bearer(secrets["ops"]), timeout=10).json()["keys"]
        found: dict[str, Any] = next(k["usage"] for k in keys if k["name"] == "vectors")
        return found

    before = usage()
    assert post(proxy, {"model": RELAYED, "input": TEXTS}, **bearer(secrets["vectors"])).status_code == 200
    after = usage()
    counted = sum(len(tokens(tokenizer, t)) for t in TEXTS)
    assert (after["requests"] - before["requests"], after["prompt_tokens"] - before["prompt_tokens"]) == (1, counted)
    assert after["completion_tokens"] == before["completion_tokens"]
    listed = httpx.get(f"{proxy.v1}/models", headers=bearer(secrets["vectors"]), timeout=10).json()["data"]
    assert [m["id"] for m in listed if m["id"].startswith("relayed")] == [RELAYED]
