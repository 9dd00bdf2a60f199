"""`Tenancy`: the keys and the limiter of one gateway process, and the tick that keeps them
fresh (keys re-read when changed, usage flushed, shared leases renewed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from konsilium.config import Config
from konsilium.errors import ConfigError
from konsilium.tenancy.keys import ApiKey, KeyStore, Usage, default_data_dir, digest_of
from konsilium.tenancy.limiter import Lease, Limiter, LimiterObserver
from konsilium.tenancy.ring import KeyRing
from konsilium.tenancy.sqlite_store import SqliteKeyStore

if TYPE_CHECKING:  # redis (~0.1 s to import) is imported only where a config names one
    import redis.asyncio

log = logging.getLogger(__name__)
KEYS_FILE = "keys.sqlite"


def open_store(config: Config, *, create: bool = False) -> KeyStore:
    """Redis when `redis_url` is set, else `<data_dir>/keys.sqlite` (`create`: the CLI makes it)."""
    if config.redis_url is not None:
        from konsilium.tenancy.redis_store import RedisKeyStore, sync_client

        return RedisKeyStore(sync_client(config.redis_url, config.tenancy.redis_timeout_ms / 1000))
    directory = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    return SqliteKeyStore(directory / KEYS_FILE, create=create)


def limiter_client(url: str, timeout_s: float) -> redis.asyncio.Redis:
    """The limiter's connection. One connection, not redis-py's pool: taking a connection from
    the pool and checking it cost ~150 us of CPU per call here, more than the call itself; one
    admission is a single short script, so calls queue on it briefly under load. No retries: a
    failure is the limiter's breaker's to handle (a retry would only make a dead Redis slower).
    No maintenance notifications (a Redis Cloud feature, a handler per call)."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.maint_notifications import MaintNotificationsConfig

    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )


ENV_ADMIN_ID = "env-admin"
MIN_ENV_SECRET = 32


def env_admin_key(name: str | None) -> tuple[ApiKey, ...]:
    """The admin key `tenancy.admin_key_env` names, from its secret in the environment; none
    unless asked for. A missing or short secret stops the start (a closed gateway is the
    operator's to notice, an open one is not)."""
    if name is None:
        return ()
    secret = os.environ.get(name, "").strip()
    if len(secret) < MIN_ENV_SECRET:
        problem = "is not set" if not secret else f"holds fewer than {MIN_ENV_SECRET} characters"
        raise ConfigError([f"tenancy.admin_key_env: environment variable {name} {problem}"])
    key = ApiKey(id=ENV_ADMIN_ID, name="admin", digest=digest_of(secret), shown=secret[:8] + "…", admin=True)
    return (key,)


class Tenancy:
    def __init__(self, config: Config, *, observer: LimiterObserver | None = None) -> None:
        self._settings = config.tenancy
        self.ring = KeyRing(open_store(config), pinned=env_admin_key(config.tenancy.admin_key_env))
        required = config.tenancy.require_keys
        self.required = required if required is not None else config.redis_url is not None
        self._redis: redis.asyncio.Redis | None = None
        shared = None
        if config.redis_url is not None:
            from konsilium.tenancy.redis_limiter import RedisLimiter

            self._redis = limiter_client(config.redis_url, config.tenancy.redis_timeout_ms / 1000)
            shared = RedisLimiter(self._redis)
        self.limiter = Limiter(shared, config.tenancy, observer=observer)
        self._ticking: asyncio.Task[None] | None = None

    @property
    def completion_reserve_tokens(self) -> int:
        return self._settings.completion_reserve_tokens

    async def start(self) -> None:
        """Read the keys once before serving (a store that fails is retried every tick)."""
        await self.ring.refresh()
        self._ticking = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._settings.refresh_s)
            try:
                await self.ring.refresh()
                await self.limiter.renew()
            except Exception:  # the tick must outlive any one failure
                log.exception("the tenancy tick failed")

    async def close(self) -> None:
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
        await self.limiter.close()  # the releases not yet given back
        await self.ring.refresh()  # the last usage counted here
        await asyncio.to_thread(self.ring.store.close)
        if self._redis is not None:
            await self._redis.aclose()

    async def finished(
        self, key: ApiKey, lease: Lease | None, prompt_tokens: int, completion_tokens: int, charged: int, *, error: bool
    ) -> None:
        """A request of `key` ended: counted, and what `charged` leaves of its reservation and its
        parallel slot go back."""
        self.ring.used(key, prompt_tokens, completion_tokens, error=error)
        if lease is not None:
            await self.limiter.release(lease, charged)

    def usage(self, stored: dict[str, Usage]) -> dict[str, Usage]:
        """What the store holds, plus what this replica counted since its last flush."""
        for key_id, pending in self.ring.pending().items():
            stored.setdefault(key_id, Usage()).add(pending)
        return stored
