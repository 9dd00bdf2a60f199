"""Frames between the gateway and a llama.cpp worker: 4-byte big-endian length + msgpack.

The worker reads `ToWorker` frames on stdin and writes `FromWorker` frames on stdout. Every
`Generate` ends with exactly one `Done` or `Failed` for its id, even when it was cancelled; every
`Embed` (an embedding model's worker) with one `Embedded`, `Failed`, or `Done` when cancelled.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

from model_store.types import EmbeddingRequest, Embeddings, Event, GenerationRequest

MAX_FRAME = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")

FailureKind = Literal["context_length", "unsupported", "invalid", "internal"]


class Generate(msgspec.Struct, tag=True):
    id: int
    request: GenerationRequest


class Embed(msgspec.Struct, tag=True):
    id: int
    request: EmbeddingRequest


class Cancel(msgspec.Struct, tag=True):
    id: int


class Ready(msgspec.Struct, tag=True):
    pid: int
    n_ctx: int  # per slot
    supports_fim: bool


class Emit(msgspec.Struct, tag=True):
    id: int
    event: Event


class Embedded(msgspec.Struct, tag=True):
    id: int
    result: Embeddings


class Done(msgspec.Struct, tag=True):
    id: int


class Failed(msgspec.Struct, tag=True):
    id: int
    kind: FailureKind
    message: str
    param: str | None = None


ToWorker = Generate | Embed | Cancel
FromWorker = Ready | Emit | Embedded | Done | Failed

_encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)


def encode_frame(message: ToWorker | FromWorker) -> bytes:
    payload = _encoder.encode(message)
    return _LENGTH.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)
