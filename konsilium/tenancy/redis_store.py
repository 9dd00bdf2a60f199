"""Keys in Redis, where every replica reads them: one hash of records, a name index, a version.

`{prefix}:keys` maps key id → the record (JSON), `{prefix}:keys:names` name → id (HSETNX makes
a name unique even when two CLIs race), `{prefix}:keys:version` is INCRed with every change in
the same MULTI: it is the one value a replica polls. Usage is a hash per key, incremented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from konsilium.tenancy.keys import ApiKey, KeyStoreError, Usage, decode_keys, still_revoked, usage_of

_encode = msgspec.json.Encoder().encode


def sync_client(url: str, timeout_s: float) -> redis.Redis:
    """No retries: a replica's next tick is the retry, and the CLI says what failed."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Redis failing (down, a timeout, a refusal) is the store failing."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise KeyStoreError(f"redis: {exc}") from exc


class RedisKeyStore:
    def __init__(self, client: redis.Redis, *, prefix: str = "konsilium") -> None:
        self._redis = client
        self._keys, self._names, self._version = f"{prefix}:keys", f"{prefix}:keys:names", f"{prefix}:keys:version"
        self._usage = f"{prefix}:usage:"

    def version(self) -> int:
        with _translated():
            value = self._redis.get(self._version)
        return int(value) if value is not None else 0

    def list_keys(self) -> list[ApiKey]:
        with _translated():
            records = self._redis.hvals(self._keys)
        raw = [r.encode() if isinstance(r, str) else r for r in records]
        return sorted(decode_keys(raw, "redis"), key=lambda k: (k.created, k.id))

    def add(self, key: ApiKey) -> None:
        with _translated():
            if not self._redis.hsetnx(self._names, key.name, key.id):
                raise KeyStoreError(f"a key named {key.name!r} exists")
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._keys, key.id, _encode(key))
                pipe.incr(self._version)
                pipe.execute()

    def replace(self, key: ApiKey) -> None:
        """Read, keep a revocation, write: under WATCH, so a revocation in between is not lost."""

        def update(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(self._keys, key.id)
            stored = decode_keys([raw] if isinstance(raw, bytes) else [], "redis")
            pipe.multi()
            pipe.hset(self._keys, key.id, _encode(still_revoked(stored[0] if stored else None, key)))
            pipe.incr(self._version)

        with _translated():
            self._redis.transaction(update, self._keys)

    def add_usage(self, usage: Mapping[str, Usage]) -> None:
        if not usage:
            return
        with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for key_id, used in usage.items():
                name = self._usage + key_id
                for field in ("requests", "prompt_tokens", "completion_tokens", "errors"):
                    if amount := getattr(used, field):
                        pipe.hincrby(name, field, amount)
                if used.last_used is not None:
                    pipe.hset(name, "last_used", repr(used.last_used))  # the newest flush wins, near enough
            pipe.execute()

    def usage(self) -> dict[str, Usage]:
        ids = [k.id for k in self.list_keys()]
        with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._usage + key_id)
            found = pipe.execute()
        return {i: usage_of({k.decode(): v for k, v in f.items()}) for i, f in zip(ids, found, strict=True) if f}

    def close(self) -> None:
        self._redis.close()
