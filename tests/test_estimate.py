"""Memory estimates from GGUF metadata: the real SmolLM2 file and synthetic files of known shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from model_store.estimate import MIB, Estimate, GGUFError, estimate_gguf, read_gguf_shape
from model_store.gguf_header import ValueType
from tests.servers import SMOLLM2


def write_gguf(path: Path, *, layers: int, heads: int, kv_heads: int, embedding: int, qtype: str) -> int:
    """A small llama-shaped GGUF with one square tensor per layer; returns its weight bytes."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(2048)
    writer.add_embedding_length(embedding)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    data = np.random.default_rng(0).standard_normal((embedding, embedding)).astype(np.float32)
    total = 0
    for layer in range(layers):
        name = f"blk.{layer}.attn_q.weight"
        if qtype == "F32":
            writer.add_tensor(name, data)
            total += data.size * 4
        elif qtype == "F16":
            writer.add_tensor(name, data.astype(np.float16))
            total += data.size * 2
        else:
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
            block, size = gguf.GGML_QUANT_SIZES[kind]
            total += data.size // block * size
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return total


def test_smollm2_shape_and_estimate() -> None:
    shape = read_gguf_shape(SMOLLM2)
    assert (shape.architecture, shape.layers, shape.kv_heads, shape.head_size) == ("llama", 30, 3, 64)
    assert shape.weights_bytes == 96_576_768
    estimate = estimate_gguf(shape, n_ctx=4096)
    assert estimate.kv_cache_bytes == 30 * 4096 * 3 * 64 * 2 * 2
    assert estimate.overhead_bytes == 64 * MIB
    assert estimate.total_mb == 247


@pytest.mark.parametrize(
    ("layers", "heads", "kv_heads", "embedding", "qtype", "n_ctx"),
    [
        (2, 4, 4, 64, "F32", 512),
        (4, 8, 2, 128, "F16", 1024),
        (3, 4, 1, 256, "Q8_0", 4096),
        (6, 8, 8, 64, "Q4_0", 256),
    ],
)
def test_synthetic_files(
    tmp_path: Path, layers: int, heads: int, kv_heads: int, embedding: int, qtype: str, n_ctx: int
) -> None:
    path = tmp_path / f"{qtype}.gguf"
    weights = write_gguf(path, layers=layers, heads=heads, kv_heads=kv_heads, embedding=embedding, qtype=qtype)
    shape = read_gguf_shape(path)
    assert (shape.layers, shape.kv_heads, shape.head_size, shape.weights_bytes) == (
        layers, kv_heads, embedding // heads, weights,
    )  # fmt: skip
    kv = layers * n_ctx * kv_heads * (embedding // heads) * 2 * 2
    assert estimate_gguf(shape, n_ctx) == Estimate(weights_bytes=weights, kv_cache_bytes=kv, overhead_bytes=64 * MIB)


def test_the_kv_cache_grows_linearly_with_the_context() -> None:
    shape = read_gguf_shape(SMOLLM2)
    assert estimate_gguf(shape, 8192).kv_cache_bytes == 2 * estimate_gguf(shape, 4096).kv_cache_bytes


@pytest.mark.parametrize("content", [b"", b"GGUF" + b"\x00" * 64, b"definitely not a model" * 50])
def test_unreadable_files_are_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=r"bad\.gguf"):
        read_gguf_shape(path)


def test_the_lean_header_reader_agrees_with_the_gguf_package() -> None:
    """`gguf_header` skips arrays instead of building them; every scalar and byte count agrees."""
    from gguf import GGUFReader, GGUFValueType

    from model_store.gguf_header import read_header

    header = read_header(SMOLLM2)
    reader = GGUFReader(SMOLLM2)
    scalars = {
        name: field.contents()
        for name, field in reader.fields.items()
        if field.types and field.types[0] != GGUFValueType.ARRAY and not name.startswith("GGUF.")
    }
    assert header.metadata == scalars
    assert header.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)


def test_the_value_types_are_the_formats_own_numbers() -> None:
    assert [(t.name, int(t)) for t in ValueType] == [(t.name, int(t)) for t in gguf.GGUFValueType]


def test_a_gateway_without_gguf_models_does_not_import_the_gguf_package() -> None:
    """gguf brings numpy (~0.1 s of start-up): a proxy-only gateway never needs either."""
    probe = "import sys, entrypoints.app; print(sorted(m for m in ('gguf', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
