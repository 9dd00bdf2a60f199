"""How much memory a model will take, estimated before it is loaded.

GGUF: the file's own metadata (`gguf_header.py`: the header only, no weights, no vocabulary)
gives the weight bytes and the shape of the KV cache:

    weights  = sum of the tensors' bytes
    kv_cache = layers x context x kv_heads x head_size x 2 (K and V) x 2 bytes (f16 cache)
    overhead = compute buffers and runtime: max(64 MiB, 10% of the weights)

A manifest's `memory_mb` overrides the estimate, and after a load the measured use (the
worker's RSS, or NVML per process on a GPU) replaces it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec

from model_store.gguf_header import Scalar, read_header

MIB = 1024 * 1024
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default f16 KV cache
MIN_OVERHEAD = 64 * MIB
OVERHEAD_SHARE = 0.10


class GGUFError(ValueError):
    """The file is not a GGUF model we can read (corrupt, truncated, or missing metadata)."""


class Estimate(msgspec.Struct, frozen=True):
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_mb(self) -> int:
        return -(-(self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes) // MIB)


class GGUFShape(msgspec.Struct, frozen=True):
    architecture: str
    layers: int
    kv_heads: int
    head_size: int
    weights_bytes: int
    context_length: int | None = None  # what the model was trained for


def read_gguf_shape(path: Path) -> GGUFShape:
    try:
        header = read_header(path)
        metadata = header.metadata
        arch = str(_value(metadata, "general.architecture"))
        layers = _int(metadata, f"{arch}.block_count")
        heads = _int(metadata, f"{arch}.attention.head_count")
        kv_heads = _int(metadata, f"{arch}.attention.head_count_kv", default=heads)
        head_size = _int(
            metadata, f"{arch}.attention.key_length", default=_int(metadata, f"{arch}.embedding_length") // heads
        )
        weights = header.tensor_bytes
        trained = _int(metadata, f"{arch}.context_length", default=0) or None
    except GGUFError:
        raise
    except (ValueError, KeyError, IndexError, OSError, struct.error) as exc:  # a bad or truncated file
        raise GGUFError(f"{path.name} is not a readable GGUF file: {exc}") from exc
    return GGUFShape(
        architecture=arch,
        layers=layers,
        kv_heads=kv_heads,
        head_size=head_size,
        weights_bytes=weights,
        context_length=trained,
    )


def estimate_gguf(shape: GGUFShape, n_ctx: int) -> Estimate:
    kv = shape.layers * n_ctx * shape.kv_heads * shape.head_size * 2 * KV_BYTES_PER_ELEMENT
    overhead = max(MIN_OVERHEAD, int(shape.weights_bytes * OVERHEAD_SHARE))
    return Estimate(weights_bytes=shape.weights_bytes, kv_cache_bytes=kv, overhead_bytes=overhead)


def llama_cpp_need_mb(path: Path, n_ctx: int, slots: int) -> int:
    """A llama.cpp worker: the weights once, and every slot's KV cache holds the whole context."""
    return estimate_gguf(read_gguf_shape(path), n_ctx * slots).total_mb


def _value(metadata: dict[str, Scalar], key: str) -> Scalar:
    if key not in metadata:
        raise GGUFError(f"GGUF metadata has no {key}")
    return metadata[key]


def _int(metadata: dict[str, Scalar], key: str, default: int | None = None) -> int:
    if default is not None and key not in metadata:
        return default
    value = _value(metadata, key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise GGUFError(f"GGUF metadata {key} is not an integer")
    return value
