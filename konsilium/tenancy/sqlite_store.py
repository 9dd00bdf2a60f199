"""Keys in a local SQLite file (`<data_dir>/keys.sqlite`), for one machine without Redis.

The gateway never creates the file: until `konsilium keys create` writes the first key there is
no file, and so no key (it looks again on each refresh). WAL mode lets the CLI write while the
gateway reads; the `meta.version` row, bumped in the same transaction as every key change, is
what the gateway polls.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from konsilium.tenancy.keys import ApiKey, KeyStoreError, Usage, decode_keys, still_revoked, usage_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    id TEXT PRIMARY KEY, requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, last_used REAL
);
INSERT INTO meta (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta);
"""
BUSY_TIMEOUT_S = 5.0
_encode = msgspec.json.Encoder().encode


class SqliteKeyStore:
    def __init__(self, path: Path, *, create: bool = False) -> None:
        """`create`: make the file (the CLI); else a missing file is an empty store (the gateway)."""
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)  # the digests are not secrets, but nobody else's business either

    def _connect(self) -> sqlite3.Connection | None:
        """The open connection, or a new one when the file was replaced or removed since (a
        connection holds on to the file it opened, not to the path)."""
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            inode = None
        if self._db is not None and inode != self._inode:
            self.close()
        self._inode = inode
        if self._db is None and inode is not None:
            try:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
            except sqlite3.Error as exc:
                raise KeyStoreError(f"{self.path}: {exc}") from exc
            self._db = db
        return self._db

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        db = self._connect()
        if db is None:
            return []
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"{self.path}: {exc}") from exc

    def version(self) -> int:
        rows = self._run("SELECT version FROM meta")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def list_keys(self) -> list[ApiKey]:
        rows = self._run("SELECT record FROM keys ORDER BY rowid")
        return decode_keys([bytes(row[0]) for row in rows], str(self.path))  # type: ignore[call-overload]

    def add(self, key: ApiKey) -> None:
        def insert(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO keys (id, name, record) VALUES (?, ?, ?)", (key.id, key.name, _encode(key)))

        try:
            self._write(insert)
        except KeyStoreError as exc:
            raise KeyStoreError(f"a key named {key.name!r} exists") if "UNIQUE" in str(exc) else exc from None

    def replace(self, key: ApiKey) -> None:
        def update(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT record FROM keys WHERE id = ?", (key.id,)).fetchone()
            stored = decode_keys([bytes(row[0])], str(self.path)) if row else []
            fixed = still_revoked(stored[0] if stored else None, key)
            db.execute("UPDATE keys SET name = ?, record = ? WHERE id = ?", (fixed.name, _encode(fixed), fixed.id))

        self._write(update)

    def _write(self, change: Callable[[sqlite3.Connection], None]) -> None:
        """`change` and the version bump in one transaction, taken before anything is read."""
        db = self._connect()
        if db is None:
            raise KeyStoreError(f"{self.path}: no such file")
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                change(db)
                db.execute("UPDATE meta SET version = version + 1")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"{self.path}: {exc}") from exc

    def add_usage(self, usage: Mapping[str, Usage]) -> None:
        db = self._connect()
        if db is None or not usage:
            return
        rows = [(i, u.requests, u.prompt_tokens, u.completion_tokens, u.errors, u.last_used) for i, u in usage.items()]
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")  # all or nothing: a failed flush is counted again next tick
                db.executemany(
                    "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                    "completion_tokens = completion_tokens + excluded.completion_tokens, "
                    "errors = errors + excluded.errors, last_used = MAX(COALESCE(last_used, 0), excluded.last_used)",
                    rows,
                )
        except sqlite3.Error as exc:
            raise KeyStoreError(f"{self.path}: {exc}") from exc

    def usage(self) -> dict[str, Usage]:
        fields = ("requests", "prompt_tokens", "completion_tokens", "errors", "last_used")
        rows = self._run(f"SELECT id, {', '.join(fields)} FROM usage")
        return {str(row[0]): usage_of(dict(zip(fields, row[1:], strict=True))) for row in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
