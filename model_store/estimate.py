"""How much memory a model will take, estimated before it is loaded.

GGUF: the file's own metadata (read with the `gguf` package, no weights are loaded) gives the
weight bytes and the shape of the KV cache:

    weights  = sum of the tensors' bytes
    kv_cache = layers x context x kv_heads x head_size x 2 (K and V) x 2 bytes (f16 cache)
    overhead = compute buffers and runtime: max(64 MiB, 10% of the weights)

A manifest's `memory_mb` overrides the estimate, and after a load the measured use (the
worker's RSS, or NVML per process on a GPU) replaces it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from gguf import GGUFReader

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
        reader = GGUFReader(path)
        arch = str(_value(reader, "general.architecture"))
        layers = _int(reader, f"{arch}.block_count")
        heads = _int(reader, f"{arch}.attention.head_count")
        kv_heads = _int(reader, f"{arch}.attention.head_count_kv", default=heads)
        head_size = _int(
            reader, f"{arch}.attention.key_length", default=_int(reader, f"{arch}.embedding_length") // heads
        )
        weights = sum(int(t.n_bytes) for t in reader.tensors)
        trained = _int(reader, f"{arch}.context_length", default=0) or None
    except GGUFError:
        raise
    except (ValueError, KeyError, IndexError, OSError) as exc:  # gguf raises these for bad files
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


def _value(reader: GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    if field is None:
        raise GGUFError(f"GGUF metadata has no {key}")
    return field.contents()


def _int(reader: GGUFReader, key: str, default: int | None = None) -> int:
    if default is not None and reader.get_field(key) is None:
        return default
    value = _value(reader, key)
    if not isinstance(value, int):
        raise GGUFError(f"GGUF metadata {key} is not an integer")
    return value
