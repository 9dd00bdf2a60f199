"""The rate limiter shared by every replica: window.py's sliding-window log, run inside Redis.

Each acquire is one EVALSHA of `window.lua` (EVAL when the server has not seen the script, e.g.
after a restart), so the check and the write are atomic without a WATCH/MULTI retry loop, and a
request pays one round trip. It is sent with `execute_command` itself rather than redis-py's
`Script` wrapper: on the single connection the gateway gives it (tenancy/service.py), one
measurement on this project's 2-core VM gave 88 us of client CPU per call against 233 us
through the wrapper (through redis-py's pool the two were within noise). The script reads the
server's TIME rather than the caller's clock: replicas whose clocks disagree still share one
window.

A key's ZSETs share a Redis Cluster hash tag (`{prefix:key_id}`), so the script's keys live in
one slot. Redis errors propagate as they are (RedisError, ConnectionError, TimeoutError,
OSError): what to do when Redis is gone (fall back to a LocalLimiter, or refuse) is the
failover wrapper's policy, not this module's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from importlib import resources

import redis.asyncio
from redis.exceptions import NoScriptError, RedisError

from konsilium.tenancy.window import PERIOD_MS, REFUSALS, Decision, Limits

SCRIPT = resources.files("konsilium.tenancy").joinpath("window.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def _none_if_negative(value: int) -> int | None:
    return None if value < 0 else value


def decode_decision(reply: Sequence[int]) -> Decision:
    """The script's integer array → the Decision window.py would have returned (-1 is None)."""
    admitted, code, retry, limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t = (int(v) for v in reply)
    return Decision(
        admitted=bool(admitted),
        refused_by=REFUSALS[code],
        retry_after_ms=_none_if_negative(retry),
        limit_requests=_none_if_negative(limit_r),
        remaining_requests=_none_if_negative(remaining_r),
        reset_requests_ms=_none_if_negative(reset_r),
        limit_tokens=_none_if_negative(limit_t),
        remaining_tokens=_none_if_negative(remaining_t),
        reset_tokens_ms=_none_if_negative(reset_t),
    )


def _now_arg(now_ms: int | None) -> str:
    return "" if now_ms is None else str(now_ms)


class RedisLimiter:
    """acquire / release / renew against Redis; `now_ms` is for tests (None: the server's TIME)."""

    errors: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)  # what "Redis failed" looks like

    def __init__(self, client: redis.asyncio.Redis, *, period_ms: int = PERIOD_MS, prefix: str = "konsilium") -> None:
        if period_ms < 1:
            raise ValueError(f"period_ms must be at least 1, not {period_ms}")
        self.period_ms, self.prefix = period_ms, prefix
        self._redis = client

    def keys_of(self, key_id: str) -> list[str]:
        """The request log, token log, leases and token sum of one key, in the script's order."""
        tag = f"{{{self.prefix}:{key_id}}}"
        return [f"{tag}:r", f"{tag}:t", f"{tag}:p", f"{tag}:s"]

    async def acquire(
        self, key_id: str, limits: Limits, cost: int, lease_id: str, lease_ttl_ms: int, *, now_ms: int | None = None
    ) -> Decision:
        if cost < 0 or lease_ttl_ms < 1:
            raise ValueError(f"cost must be >= 0 and lease_ttl_ms >= 1, not {cost} and {lease_ttl_ms}")
        args: list[str | int] = [
            "acquire",
            _now_arg(now_ms),
            self.period_ms,
            limits.rpm or 0,
            limits.tpm or 0,
            limits.max_parallel or 0,
            cost,
            lease_id,
            lease_ttl_ms,
        ]
        return decode_decision(await self._call(key_id, args))

    async def _call(self, key_id: str, args: Sequence[str | int]) -> Sequence[int]:
        keys = self.keys_of(key_id)
        try:
            reply = await self._redis.execute_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:  # a server that has not seen it (restarted, flushed): EVAL caches it
            reply = await self._redis.execute_command("EVAL", SCRIPT, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        return reply  # type: ignore[no-any-return]

    async def release(
        self, key_id: str, lease_id: str, reserved: int, actual: int, *, now_ms: int | None = None
    ) -> None:
        if actual < 0:
            raise ValueError(f"actual must be >= 0, not {actual}")
        args: list[str | int] = ["release", _now_arg(now_ms), self.period_ms, lease_id, reserved, actual]
        await self._call(key_id, args)

    async def renew(
        self, key_id_to_lease_ids: Mapping[str, Sequence[str]], lease_ttl_ms: int, *, now_ms: int | None = None
    ) -> None:
        """Every key's live leases in one pipeline."""
        if lease_ttl_ms < 1:
            raise ValueError(f"lease_ttl_ms must be at least 1, not {lease_ttl_ms}")
        batches = [(key_id, ids) for key_id, ids in key_id_to_lease_ids.items() if ids]
        if not batches:
            return
        await self._pipelined(
            [(key_id, ["renew", _now_arg(now_ms), self.period_ms, lease_ttl_ms, *ids]) for key_id, ids in batches]
        )

    async def release_many(self, released: Sequence[tuple[str, str, int, int]]) -> int:
        """Several requests' releases (key id, lease id, reserved, actual): one script call per
        key, one after the other on the same connection (a pipeline would take a second one from
        redis-py's pool, which costs more here than the calls it saves). Returns the calls made."""
        by_key: dict[str, list[str | int]] = {}
        for key_id, lease_id, reserved, actual in released:
            by_key.setdefault(key_id, ["release", "", self.period_ms]).extend([lease_id, reserved, max(0, actual)])
        for key_id, args in by_key.items():
            await self._call(key_id, args)
        return len(by_key)

    async def _pipelined(self, calls: Sequence[tuple[str, Sequence[str | int]]], *, sha: bool = True) -> None:
        """Several script calls in one round trip (EVALSHA; all again as EVAL if the script is unknown)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id, args in calls:
                keys = self.keys_of(key_id)
                pipe.execute_command(
                    "EVALSHA" if sha else "EVAL", SCRIPT_SHA if sha else SCRIPT, len(keys), *keys, *args
                )
            try:
                await pipe.execute()
            except NoScriptError:
                if not sha:
                    raise
                await self._pipelined(calls, sha=False)
