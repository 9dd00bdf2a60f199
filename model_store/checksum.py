"""Hash-pinned model files: sha256 checked on first load, cached by path, size and mtime.

A restart does not re-hash gigabytes: the cache remembers the digest of each (path, size,
mtime_ns); a changed file has a new key and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "konsilium"


class ChecksumCache:
    def __init__(self, directory: Path) -> None:
        self._file = directory / "checksums.json"

    def digest(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        known = self._read()
        if key not in known:
            known[key] = sha256_of(path)
            self._write(known)
        return known[key]

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, known: dict[str, str]) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        partial = self._file.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(known, indent=0, sort_keys=True), encoding="utf-8")
        partial.replace(self._file)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
