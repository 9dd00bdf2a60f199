"""The pure parts of embeddings: the worker's batch plan, pooling and unit vectors
(model_store/llama_cpp/embedder.py), and reading an upstream's embeddings (model_store/openai/wire.py)."""

from __future__ import annotations

import base64
import struct

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from konsilium.errors import BackendError
from model_store.llama_cpp.embedder import Pending, plan_batch, pool, unit_bytes
from model_store.openai import wire
from model_store.types import EmbeddingRequest


def pending(*lengths: int) -> list[Pending]:
    return [Pending(job_id=1, index=i, tokens=[7] * n) for i, n in enumerate(lengths)]


@pytest.mark.parametrize(
    ("lengths", "sequences", "budget", "taken"),
    [
        ((), 4, 100, 0),
        ((10, 10, 10), 4, 100, 3),  # all fit
        ((10, 10, 10, 10, 10), 4, 100, 4),  # one input per sequence
        ((60, 30, 20), 4, 100, 2),  # the third would pass the budget
        ((100, 1), 4, 100, 1),  # a whole budget alone
        ((30, 80, 1), 4, 100, 1),  # order is kept: a short input never jumps a long one
    ],
)
def test_a_decode_takes_whole_inputs_from_the_front(
    lengths: tuple[int, ...], sequences: int, budget: int, taken: int
) -> None:
    assert plan_batch(pending(*lengths), sequences, budget) == taken


@given(st.lists(st.integers(1, 64), max_size=30), st.integers(1, 8), st.integers(64, 256))
def test_every_input_is_taken_in_order_within_the_bounds(lengths: list[int], sequences: int, budget: int) -> None:
    queue = pending(*lengths)
    while queue:
        taken = plan_batch(queue, sequences, budget)
        assert 1 <= taken <= sequences
        assert sum(len(p.tokens) for p in queue[:taken]) <= budget
        queue = queue[taken:]


def test_pooling_takes_the_mean_the_first_or_the_last_token() -> None:
    rows = numpy.array([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]], dtype=numpy.float32)
    assert pool(rows, "mean").tolist() == [3.0, 3.0]
    assert pool(rows, "cls").tolist() == [1.0, 2.0]
    assert pool(rows, "last").tolist() == [5.0, 1.0]


def test_a_vector_is_cut_then_made_unit_length_as_float32() -> None:
    vector = numpy.array([3.0, 4.0, 12.0])
    assert struct.unpack("<3f", unit_bytes(vector, None)) == pytest.approx((3 / 13, 4 / 13, 12 / 13), abs=1e-7)
    assert struct.unpack("<2f", unit_bytes(vector, 2)) == pytest.approx((0.6, 0.8), abs=1e-7)
    assert unit_bytes(numpy.zeros(2), None) == bytes(8)  # nothing to scale


def test_an_upstream_answer_is_put_back_in_input_order() -> None:
    answer = b"""{"object": "list", "model": "m", "usage": {"prompt_tokens": 7, "total_tokens": 7}, "data": [
        {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
        {"object": "embedding", "index": 0, "embedding": "%s"}]}""" % base64.b64encode(struct.pack("<2f", 0.6, 0.8))
    embeddings = wire.embeddings(answer, 2, "http://up")
    assert embeddings.vectors == (struct.pack("<2f", 0.6, 0.8), struct.pack("<2f", 0.0, 1.0))
    assert embeddings.prompt_tokens == 7


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"data": [{"index": 0, "embedding": [1.0]}]}', "upstream http://up sent 1 embeddings for 2 inputs"),
        (b"<html>", "upstream http://up sent unreadable embeddings"),
        (b'{"data": [{"embedding": "not base64!"}, {"embedding": []}]}', "upstream http://up sent unreadable"),
        (b'{"data": [{"embedding": [1e300]}, {"embedding": []}]}', "upstream http://up sent unreadable"),
    ],
)
def test_an_unreadable_upstream_answer_is_a_backend_error(body: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        wire.embeddings(body, 2, "http://up")


def test_the_upstream_is_sent_what_was_validated_only() -> None:
    texts = wire.embedding_body(EmbeddingRequest(texts=("a", "b"), dimensions=8), "upstream-name")
    assert texts == b'{"model":"upstream-name","input":["a","b"],"dimensions":8}'
    ids = wire.embedding_body(EmbeddingRequest(tokens=((1, 2), (3,))), "m")
    assert ids == b'{"model":"m","input":[[1,2],[3]]}'
