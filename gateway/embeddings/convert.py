"""An embeddings request's `input`, checked item by item, as an `EmbeddingRequest`; the vectors
back as OpenAI's list: floats, or base64 (what the official SDKs ask for unless told otherwise).

Every refusal names the item it blames (`input[3]`, `input[1][7]`) and says what would do.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from gateway.embeddings.protocol import CreateEmbeddingRequest, CreateEmbeddingResponse, Embedding, EmbeddingUsage
from konsilium.errors import InvalidRequestError
from model_store.types import MAX_EMBEDDING_INPUTS, MAX_EMBEDDING_TOKENS, EmbeddingRequest, Embeddings
from routing.policy import estimate_tokens

MAX_TOKEN_ID = 2**31 - 1
SHAPES = "a string, an array of strings, an array of token ids or an array of token-id arrays"

Inputs = tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]


def embedding_request(body: CreateEmbeddingRequest) -> EmbeddingRequest:
    texts, tokens = inputs(body.input)
    return EmbeddingRequest(texts=texts, tokens=tokens, dimensions=body.dimensions)


def inputs(raw: Any) -> Inputs:
    """`input`'s texts, or its token-id arrays (one of the two is empty)."""
    if isinstance(raw, str):
        return (_text(raw, "input"),), ()
    if not isinstance(raw, list):
        raise InvalidRequestError(f"Invalid type for 'input': expected {SHAPES}.", param="input")
    if not raw:
        raise InvalidRequestError("'input' cannot be an empty array: give at least one text.", param="input")
    if _is_token(raw[0]):
        return (), _bounded((_token_ids(raw, "input"),))
    if len(raw) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(
            f"'input' holds {len(raw)} items: at most {MAX_EMBEDDING_INPUTS} in one request.", param="input"
        )
    if isinstance(raw[0], str):
        return tuple(_text(item, f"input[{i}]") for i, item in enumerate(raw)), ()
    if isinstance(raw[0], list):
        arrays = tuple(_token_ids(item, f"input[{i}]") for i, item in enumerate(raw))
        return (), _bounded(arrays)
    raise InvalidRequestError(f"Invalid type for 'input[0]': expected {SHAPES}.", param="input[0]")


def _text(item: Any, where: str) -> str:
    if not isinstance(item, str):
        raise InvalidRequestError(f"Invalid type for '{where}': expected a string, as input[0] is.", param=where)
    if not item:
        raise InvalidRequestError(f"'{where}' cannot be an empty string: there is nothing to embed.", param=where)
    return item


def _token_ids(item: Any, where: str) -> tuple[int, ...]:
    if not isinstance(item, list) or not item:
        raise InvalidRequestError(f"'{where}' must be a non-empty array of token ids, as input[0] is.", param=where)
    for j, token in enumerate(item):
        if not _is_token(token):
            raise InvalidRequestError(
                f"Invalid value for '{where}[{j}]': a token id is a whole number from 0 to {MAX_TOKEN_ID}.",
                param=f"{where}[{j}]",
            )
    return tuple(item)


def _bounded(arrays: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    total = sum(len(a) for a in arrays)
    if total > MAX_EMBEDDING_TOKENS:
        raise InvalidRequestError(
            f"'input' holds {total} tokens: at most {MAX_EMBEDDING_TOKENS} in one request.", param="input"
        )
    return arrays


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def estimated_tokens(request: EmbeddingRequest) -> int:
    """What a key's token limit reserves before the model has counted: token ids exactly, texts
    as routing estimates them."""
    if request.tokens:
        return sum(len(t) for t in request.tokens)
    return sum(estimate_tokens(len(t)) for t in request.texts)


def response(embeddings: Embeddings, model: str, encoding_format: str | None) -> CreateEmbeddingResponse:
    data = [Embedding(index=i, embedding=_encoded(v, encoding_format)) for i, v in enumerate(embeddings.vectors)]
    usage = EmbeddingUsage(prompt_tokens=embeddings.prompt_tokens, total_tokens=embeddings.prompt_tokens)
    return CreateEmbeddingResponse(data=data, model=model, usage=usage)


def _encoded(vector: bytes, encoding_format: str | None) -> list[float] | str:
    """Each float32 as the double it is exactly (JSON), or the bytes themselves (base64)."""
    if encoding_format == "base64":
        return base64.b64encode(vector).decode("ascii")
    return list(struct.unpack(f"<{len(vector) // 4}f", vector))
