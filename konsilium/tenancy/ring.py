"""The keys as this replica knows them: a dict by digest, refreshed from the store.

No request waits on the store. Every `refresh_s` one read of the store's version (one Redis GET,
or one SQLite row) says whether anything changed; only then are the keys read again. So a key
created, changed or revoked anywhere is in force on every replica within `refresh_s` (plus one
read), and the hot path costs a SHA-256 and a dict lookup. The same tick flushes the usage
counted here since the last one.

If the store cannot be read, or comes back empty (a Redis restarted without its data), the keys
read last stay in force: a failing Redis never opens the gateway, nor locks out the keys it
knew. Before the first successful read nothing is known: `loaded` is false and the gateway
refuses with a 503 until it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from konsilium.tenancy.keys import ApiKey, KeyStore, KeyStoreError, Usage, digest_of, matches

log = logging.getLogger(__name__)


class KeyRing:
    def __init__(
        self, store: KeyStore, *, pinned: tuple[ApiKey, ...] = (), clock: Callable[[], float] = time.time
    ) -> None:
        """`pinned`: keys from outside the store (the environment's admin key), always in force."""
        self.store = store
        self._clock = clock
        self._pinned = {key.digest: key for key in pinned}
        self._by_digest: dict[str, ApiKey] = {}
        self._version: int | None = None  # None: never read
        self._pending: dict[str, Usage] = {}  # counted here, not yet flushed
        self._failing = False
        self._lost: dict[str, ApiKey] = {}  # keys a store that lost its data no longer holds

    @property
    def loaded(self) -> bool:
        return self._version is not None

    @property
    def enabled(self) -> bool:
        """Keys are asked for: at least one exists (a revoked one too)."""
        return bool(self._by_digest or self._pinned)

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key this secret belongs to, unless it is unknown or revoked."""
        digest = digest_of(secret)
        key = self._pinned.get(digest) or self._by_digest.get(digest)
        if key is None or key.revoked is not None or not matches(key, secret):
            return None
        return key

    def used(self, key: ApiKey, prompt_tokens: int, completion_tokens: int, *, error: bool) -> None:
        usage = self._pending.get(key.id)
        if usage is None:
            usage = self._pending[key.id] = Usage()
        usage.requests += 1
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        usage.errors += error
        usage.last_used = self._clock()

    def pending(self) -> dict[str, Usage]:
        return self._pending

    async def refresh(self) -> None:
        """One tick: re-read the keys if their version moved, then flush the usage counted here
        (a flush that fails keeps the counts for the next tick and does not undo the read)."""
        try:
            keys = await asyncio.to_thread(self._read)
        except KeyStoreError as exc:
            self._failed(exc)
            return
        if keys is not None:
            self._replace(*keys)
        pending, self._pending = self._pending, {}
        if not pending:
            self._answered()
            return
        try:
            await asyncio.to_thread(self.store.add_usage, pending)
        except KeyStoreError as exc:
            for key_id, usage in pending.items():  # counted again at the next tick
                self._pending.setdefault(key_id, Usage()).add(usage)
            self._failed(exc)
            return
        self._answered()

    def _answered(self) -> None:
        if self._failing:
            log.warning("the key store answers again")
        self._failing = False

    def _failed(self, exc: KeyStoreError) -> None:
        if not self._failing:
            log.warning("the key store cannot be read (%s): the keys read last stay in force", exc)
        self._failing = True

    def _replace(self, version: int, keys: list[ApiKey]) -> None:
        """A version that went back is a store that lost its data (a Redis restarted without
        it): the keys known here stay in force beside what it holds from then on, or every
        replica would open to everyone. Restore the store's data rather than re-creating keys."""
        if self._version is not None and version < self._version:
            log.warning(
                "the key store's version went back from %d to %d (its data lost?): keeping the %d keys known here",
                self._version, version, len(self._by_digest),
            )  # fmt: skip
            self._lost.update(self._by_digest)
        self._version, self._by_digest = version, {**self._lost, **{k.digest: k for k in keys}}

    def _read(self) -> tuple[int, list[ApiKey]] | None:
        version = self.store.version()
        if version == self._version:
            return None
        return version, self.store.list_keys()
