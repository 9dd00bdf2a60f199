"""OpenAI's embeddings request and response as msgspec Structs, with OpenAI's names and order.

`input` stays plain JSON until `convert.py` reads it: it may be a string, an array of strings, an
array of token ids or an array of token-id arrays (one msgspec union cannot hold four arrays),
and each wrong shape there names the item it blames.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Dimensions = Annotated[int, Meta(ge=1, le=65_536)]


class CreateEmbeddingRequest(msgspec.Struct, kw_only=True):
    """Unknown fields are dropped (never forwarded); `null` reads as left out."""

    model: str
    input: Any
    encoding_format: Literal["float", "base64"] | None = None  # None: float
    dimensions: Dimensions | None = None
    user: str | None = None  # accepted, as OpenAI does; nothing reads it


class Embedding(msgspec.Struct, kw_only=True):
    object: str = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


request_decoder = msgspec.json.Decoder(CreateEmbeddingRequest)
