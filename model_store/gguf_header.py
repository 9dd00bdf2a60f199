"""A lean GGUF header reader: the metadata's scalars and the tensors' sizes, nothing else.

`gguf.GGUFReader` turns every element of every metadata array into a numpy view — SmolLM2's
49k-token vocabulary and its merges took 2.3 s to read on the 2-core machine, on every model's
first load. Estimating memory needs only a few scalars and each tensor's byte size, so this
reader steps over arrays without building them (~0.05 s for the same file), reading the file
as one memory map with `struct`. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md

The value types' numbers are the format's own (below); the `gguf` package (and numpy with it,
~0.1 s to import) is imported only when a file's tensors are sized, so a gateway with no GGUF
model never loads it.
"""

from __future__ import annotations

import enum
import mmap
import struct
from pathlib import Path

import msgspec

MAGIC = b"GGUF"


class ValueType(enum.IntEnum):
    """A metadata value's type, numbered as the GGUF format numbers it (gguf.GGUFValueType)."""

    UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)


_SCALARS: dict[int, str] = {
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d",
}  # fmt: skip
Scalar = int | float | bool | str


class GGUFHeader(msgspec.Struct, frozen=True):
    metadata: dict[str, Scalar]  # scalar values only; arrays are skipped
    tensor_bytes: int  # the sum of every tensor's size


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.at = data, 0

    def unpack(self, fmt: str) -> Scalar:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def count(self) -> int:
        return int(self.unpack("<Q"))

    def string(self) -> str:
        size = self.count()
        if self.at + size > len(self.data):
            raise ValueError("a string runs past the end of the file")
        text = self.data[self.at : self.at + size].decode("utf-8", errors="replace")
        self.at += size
        return text

    def skip_value(self, kind: int) -> None:
        if kind == ValueType.STRING:
            size = self.count()  # read first: `self.at += self.count()` would lose the count's own 8 bytes
            self.at += size
        elif kind == ValueType.ARRAY:
            item, items = int(self.unpack("<I")), self.count()
            if item in _SCALARS:
                self.at += struct.calcsize(_SCALARS[item]) * items
            else:
                for _ in range(items):
                    self.skip_value(item)
        elif kind in _SCALARS:
            self.at += struct.calcsize(_SCALARS[kind])
        else:
            raise ValueError(f"unknown metadata value type {kind}")


def read_header(path: Path) -> GGUFHeader:
    """Raises ValueError (or OSError) for anything that is not a readable GGUF file."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        if data[:4] != MAGIC:
            raise ValueError("no GGUF magic number")
        cursor.at = 4
        version, tensors, entries = cursor.unpack("<I"), cursor.count(), cursor.count()
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        metadata: dict[str, Scalar] = {}
        for _ in range(entries):
            key, kind = cursor.string(), int(cursor.unpack("<I"))
            if kind == ValueType.STRING:
                metadata[key] = cursor.string()
            elif kind in _SCALARS:
                metadata[key] = cursor.unpack(_SCALARS[kind])
            else:
                cursor.skip_value(kind)
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # numpy comes with it: imported only here

        total = 0
        for _ in range(tensors):
            cursor.string()
            dims = [cursor.count() for _ in range(int(cursor.unpack("<I")))]
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(int(cursor.unpack("<I")))]
            cursor.count()  # the data's offset
            elements = 1
            for dim in dims:
                elements *= dim
            total += elements // block * size
        return GGUFHeader(metadata=metadata, tensor_bytes=total)
