"""API keys: what a key may do, how its secret is made and checked, and the store protocol.

A secret is `ksk-` and 43 characters of `secrets.token_urlsafe(32)` (256 bits): recognisable
in a leaked-secret scan, never guessable. Only its SHA-256 is stored. A lookup is by that
digest, so the time it takes depends on the digest, not on how much of a real secret a guess
shares, and the match is confirmed with `hmac.compare_digest` (constant time). A
high-entropy secret needs no slow password hash: nothing can be brute-forced from its digest.

A key is never deleted, only revoked: a revoked key still counts as "a key exists", so revoking
every key closes the gateway rather than reopening it to everyone.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Protocol

import msgspec

log = logging.getLogger(__name__)
SECRET_PREFIX = "ksk-"
SECRET = re.compile(r"ksk-[A-Za-z0-9_-]{43}")
KeyName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]


class KeyStoreError(Exception):
    """The store cannot be read or written (Redis down, a locked or corrupt SQLite file)."""


class ApiKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str  # public: names the key's limiter state and its usage; never the secret
    name: KeyName
    digest: str  # sha256 of the secret, hex
    shown: str  # the secret's first characters, to recognise it in `keys list`
    tenant: KeyName | None = None
    models: tuple[str, ...] = ()  # models and adapters it may use; empty: every one its tenant may
    rpm: Limit | None = None
    tpm: Limit | None = None
    max_parallel: Limit | None = None
    admin: bool = False
    created: float = 0.0
    revoked: float | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_parallel is not None


class Usage(msgspec.Struct, kw_only=True):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    last_used: float | None = None

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.errors += other.errors
        if other.last_used is not None:
            self.last_used = max(self.last_used or 0.0, other.last_used)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", errors="replace")).hexdigest()


def matches(key: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(key.digest, digest_of(secret))


def make_key(name: str, **fields: object) -> tuple[ApiKey, str]:
    """A new key and its secret (shown once, stored nowhere)."""
    secret = new_secret()
    key = msgspec.convert(
        {"id": secrets.token_hex(6), "name": name, "digest": digest_of(secret), "shown": secret[:10],
         "created": time.time(), **fields},
        ApiKey,
    )  # fmt: skip
    return key, secret


class KeyStore(Protocol):
    """Where keys and their usage live: Redis (shared) or SQLite (one machine). Synchronous: the
    CLI calls it directly, the gateway from a thread, about once a second, never per request."""

    def version(self) -> int:
        """Changes whenever a key is added or changed (0: the store holds nothing yet)."""

    def list_keys(self) -> list[ApiKey]: ...

    def add(self, key: ApiKey) -> None:
        """Raises `KeyStoreError` if the name is taken."""

    def replace(self, key: ApiKey) -> None: ...

    def add_usage(self, usage: Mapping[str, Usage]) -> None: ...

    def usage(self) -> dict[str, Usage]: ...

    def close(self) -> None: ...


_decode_key = msgspec.json.Decoder(ApiKey).decode


def decode_keys(records: Iterable[bytes], where: str) -> list[ApiKey]:
    """The records that decode; one that does not (written by hand, by a newer version) is left
    out with a warning: its key stops working, the rest go on (closed for it, never open)."""
    keys = []
    for record in records:
        try:
            keys.append(_decode_key(record))
        except msgspec.DecodeError as exc:
            log.warning("%s: a key record that cannot be read is ignored: %s", where, exc)
    return keys


def still_revoked(stored: ApiKey | None, new: ApiKey) -> ApiKey:
    """A revocation is for good: a change written from a copy read before it (`keys update`
    racing `keys revoke`) keeps it."""
    if stored is not None and stored.revoked is not None and new.revoked is None:
        return msgspec.structs.replace(new, revoked=stored.revoked)
    return new


def default_data_dir() -> Path:
    if "KONSILIUM_DATA_DIR" in os.environ:
        return Path(os.environ["KONSILIUM_DATA_DIR"])
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "konsilium"


def find(keys: list[ApiKey], name_or_id: str) -> ApiKey | None:
    return next((k for k in keys if name_or_id in (k.name, k.id)), None)


def usage_of(values: Mapping[str, object]) -> Usage:
    def number(field: str) -> int:
        value = values.get(field)
        return int(value) if isinstance(value, int | str | bytes) and value not in (b"", "") else 0

    last = values.get("last_used")
    return Usage(
        requests=number("requests"),
        prompt_tokens=number("prompt_tokens"),
        completion_tokens=number("completion_tokens"),
        errors=number("errors"),
        last_used=float(last) if isinstance(last, float | int | str | bytes) and last not in (b"", "") else None,
    )
