"""Limits per key: decided in Redis (shared by every replica), or here while Redis fails.

Each request is one Lua call (konsilium/tenancy/window.lua): the request, token and parallel
limits are checked and taken together, by Redis's clock. A request that reserved tokens or a
parallel slot gives them back when it ends, within `RELEASE_BATCH_S` (10 ms), in one pipeline
with every other request that ended meanwhile: on this project's 2-core VM one redis-py round
trip costs the gateway 150-250 us of CPU, a tenth of a whole proxied request, so the give-back is
batched and only the admission is paid per request. A key with only a request limit gives
nothing back.

Redis failing never fails a request nor slows many: every call has a short timeout, and the
first error opens a breaker for `redis_retry_s`. Meanwhile this replica decides alone, with each
limit divided by `replicas` (so the fleet together stays near the limit), counts it in a metric,
and warns once. After `redis_retry_s` one request tries Redis again; when it answers, limits are
shared again. A lease taken in Redis that cannot be released there expires by itself
(`lease_ttl_s`); this replica renews the leases of its requests in flight meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from konsilium.config import TenancyConfig
from konsilium.tenancy.keys import ApiKey
from konsilium.tenancy.window import Decision, Limits, LocalLimiter

if TYPE_CHECKING:  # redis is imported only where a config names one
    from konsilium.tenancy.redis_limiter import RedisLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")
RELEASE_BATCH_S = 0.01  # requests that end within this go back to Redis in one pipeline


class LimiterObserver(Protocol):
    def limit_decided(self, where: str) -> None:
        """`where`: "redis" or "local" (Redis failing, or none configured)."""

    def redis_failed(self, operation: str) -> None: ...


class _Unobserved:
    def limit_decided(self, where: str) -> None:
        pass

    def redis_failed(self, operation: str) -> None:
        pass


@dataclass(frozen=True)
class Release:
    key_id: str
    lease_id: str
    reserved: int
    actual: int
    at: float  # when the request ended (the limiter's clock)


@dataclass
class Lease:
    key: ApiKey
    id: str
    reserved: int  # tokens taken up front: the prompt's estimate plus max_tokens
    decision: Decision
    shared: bool  # decided in Redis

    @property
    def held(self) -> bool:
        """Admitted with something to give back when the request ends."""
        return self.decision.admitted and (self.key.tpm is not None or self.key.max_parallel is not None)


def limits_of(key: ApiKey, replicas: int = 1) -> Limits:
    def share(limit: int | None) -> int | None:
        return None if limit is None else max(1, limit // replicas)

    return Limits(rpm=share(key.rpm), tpm=share(key.tpm), max_parallel=share(key.max_parallel))


class Limiter:
    def __init__(
        self,
        shared: RedisLimiter | None,
        settings: TenancyConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: LimiterObserver | None = None,
    ) -> None:
        self._shared = shared
        self._shared_errors = shared.errors if shared is not None else (OSError, TimeoutError)
        self._local = LocalLimiter(clock=clock)
        self._settings = settings
        self._clock = clock
        self._observer = observer or _Unobserved()
        self._down = False  # the last call failed: decided here until a probe succeeds
        self._retry_at = 0.0  # when the next probe may go
        self._probing = False
        self._in_flight: dict[str, Lease] = {}  # leases held (shared and local), renewed until released
        self._releases: list[Release] = []  # ended, not yet given back to Redis
        self._flush_at: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Future[None]] = set()
        self._renewed = clock()

    @property
    def shared_up(self) -> bool:
        """Limits are decided in Redis now (False without Redis, or while it fails)."""
        return self._shared is not None and not self._down

    def _may_call(self) -> bool:
        if self._shared is None:
            return False
        return not self._down or (not self._probing and self._clock() >= self._retry_at)

    async def acquire(self, key: ApiKey, cost: int) -> Lease:
        lease_id = secrets.token_hex(8)
        ttl_ms = int(self._settings.lease_ttl_s * 1000)
        decision = await self._shared_call("acquire", self._acquire_shared(key, cost, lease_id, ttl_ms))
        if decision is not None:
            lease = Lease(key, lease_id, cost, decision, shared=True)
            self._observer.limit_decided("redis")
        else:
            if self._shared is not None and (key.tpm is not None or key.max_parallel is not None):
                # a call that timed out may still have run: its lease is given back (a no-op if not)
                self._queue(Release(key.id, lease_id, cost, 0, self._clock()))
            limits = limits_of(key, self._settings.replicas if self._shared is not None else 1)
            lease = Lease(
                key, lease_id, cost, self._local.acquire(key.id, limits, cost, lease_id, ttl_ms), shared=False
            )
            self._observer.limit_decided("local")
        if lease.held:
            self._in_flight[lease_id] = lease
        return lease

    async def _acquire_shared(self, key: ApiKey, cost: int, lease_id: str, ttl_ms: int) -> Decision:
        assert self._shared is not None
        return await self._shared.acquire(key.id, limits_of(key), cost, lease_id, ttl_ms)

    async def release(self, lease: Lease, actual: int) -> None:
        if self._in_flight.pop(lease.id, None) is None:
            return  # nothing held, or given back already
        if not lease.shared:
            self._local.release(lease.key.id, lease.id, lease.reserved, actual)
        else:
            self._queue(Release(lease.key.id, lease.id, lease.reserved, actual, self._clock()))

    def _queue(self, release: Release) -> None:
        self._releases.append(release)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(RELEASE_BATCH_S, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_at = None
        task = asyncio.ensure_future(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Give back what ended since the last flush: one call per key. What Redis does not take
        (down, failing) is kept and sent again once it answers (a release is idempotent), until
        its lease would have expired there anyway."""
        batch, self._releases = self._releases, []
        by_key: dict[str, list[Release]] = {}
        for release in batch:
            by_key.setdefault(release.key_id, []).append(release)
        kept: list[Release] = []
        for key_id, releases in by_key.items():
            items = [(key_id, r.lease_id, r.reserved, r.actual) for r in releases]
            if self._shared is None or await self._shared_call("release", self._shared.release_many(items)) is None:
                horizon = self._clock() - self._settings.lease_ttl_s
                kept += [r for r in releases if r.at > horizon]
        if kept:
            self._releases = kept + self._releases
            if self._flush_at is None:  # again when the breaker lets a probe through
                retry_s = max(RELEASE_BATCH_S, self._retry_at - self._clock())
                self._flush_at = asyncio.get_running_loop().call_later(retry_s, self._flush_soon)

    async def close(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        await asyncio.gather(*self._flushing, return_exceptions=True)
        await self.flush()
        if self._flush_at is not None:  # what Redis would not take now expires there by itself
            self._flush_at.cancel()
            self._flush_at = None

    async def renew(self) -> None:
        """Keep this replica's leases alive, in Redis and here (every third of their time to live):
        a request may run longer than `lease_ttl_s`, and its slot must hold for all of it."""
        ttl_s = self._settings.lease_ttl_s
        if not self._in_flight or self._clock() - self._renewed < ttl_s / 3:
            return
        self._renewed = self._clock()
        shared: dict[str, list[str]] = {}
        local: dict[str, list[str]] = {}
        for lease in self._in_flight.values():
            (shared if lease.shared else local).setdefault(lease.key.id, []).append(lease.id)
        self._local.renew(local, int(ttl_s * 1000))
        if shared and self._shared is not None:
            await self._shared_call("renew", self._shared.renew(shared, int(ttl_s * 1000)))

    async def _shared_call(self, operation: str, call: Coroutine[object, object, T]) -> T | None:
        """The call's result, or None when Redis is down (the breaker open) or fails now. Only
        the probe (a call made while the breaker is open) closes it: a call that began before it
        opened and succeeds late says nothing about Redis now."""
        if not self._may_call():
            call.close()
            return None
        probe = self._down
        self._probing = self._probing or probe
        try:
            async with asyncio.timeout(self._settings.redis_timeout_ms / 1000):
                result = await call
        except self._shared_errors as exc:
            self._observer.redis_failed(operation)
            if not self._down:
                why, retry_s = str(exc) or type(exc).__name__, self._settings.redis_retry_s
                log.warning("redis failed (%s: %s): limits are per replica for %gs", operation, why, retry_s)
            self._down, self._retry_at = True, self._clock() + self._settings.redis_retry_s
            return None
        finally:
            if probe:
                self._probing = False
        if probe and self._down:
            log.warning("redis answers again: limits are shared again")
            self._down = False
        return result
