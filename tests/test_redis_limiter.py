"""The limiter's Lua script (konsilium/tenancy/window.lua) against a real redis-server: it agrees
with the pure window.py decision for decision and state for state, an acquire is one round trip,
a key's entries share a cluster slot and vanish when idle, and the server's clock is the clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from konsilium.tenancy.redis_limiter import RedisLimiter
from konsilium.tenancy.window import KeyWindow, Limits, Snapshot
from tests.redis_server import run_redis
from tests.servers import free_port

P = 60_000
BASE_MS = 1_700_000_000_000  # an epoch-sized `now`, as the server's TIME gives, to keep Lua's doubles honest
TTL = 30_000


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_redis(tmp_path_factory.mktemp("redis-limiter")) as server:
        yield server.url


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def snapshot_of(
    client: redis.asyncio.Redis, limiter: RedisLimiter, key_id: str, now: int
) -> tuple[Snapshot, bytes | None, bytes | None]:
    """What Redis holds for a key at `now`, in KeyWindow.snapshot's order (entries a call has not
    trimmed yet left out), with the stored token sum and the sum its token log adds up to."""
    requests, tokens, leases, sums = limiter.keys_of(key_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrange(requests, 0, -1, withscores=True)
        pipe.zrange(tokens, 0, -1, withscores=True)
        pipe.zrange(leases, 0, -1, withscores=True)
        pipe.get(sums)
        r, t, p, stored = await pipe.execute()
    spends = [(int(score), *member.decode().rsplit(":", 1)) for member, score in t]
    snapshot = Snapshot(
        requests=tuple(int(score) for _, score in r if score > now - limiter.period_ms),
        tokens=tuple(sorted((at, i, int(cost)) for at, i, cost in spends if at > now - limiter.period_ms)),
        leases=tuple(sorted((member.decode(), int(score)) for member, score in p if score > now)),
    )
    added = f"{sum(int(cost) for _, _, cost in spends)}:{len(spends)}".encode() if spends else None
    return snapshot, stored, added


# ---------------------------------------------------------------- agreement

# Coarse grids (whole seconds, tens of tokens) make the boundaries happen: an entry leaving at
# exactly now, a refund freeing exactly the excess.
tens = st.integers(1, 100).map(lambda n: n * 10)
limits_strategy = st.builds(
    Limits,
    rpm=st.none() | st.integers(1, 8),
    tpm=st.none() | tens | st.integers(1, 1_000),
    max_parallel=st.none() | st.integers(1, 4),
)
step = st.integers(-2, 25).map(lambda n: n * 1_000) | st.integers(-3, 25_000)  # mostly forward, now and then back
ttl = st.sampled_from([10_000, 20_000, 60_000, 90_000]) | st.integers(10_000, 90_000)
cost = st.integers(0, 40).map(lambda n: n * 10) | st.integers(0, 400)
# (op, dt, a, b): acquire (cost, ttl), release (which id, actual; odd `which` names a wrong reservation),
# renew (which ids, ttl)
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), step, cost, ttl),
        st.tuples(st.just("release"), step, st.integers(0, 99), cost),
        st.tuples(st.just("renew"), step, st.integers(0, 99), ttl),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(limits_strategy, min_size=1, max_size=2), ops_strategy)
async def test_the_script_and_the_pure_window_agree(
    redis_url: str, choices: list[Limits], ops: list[tuple[str, int, int, int]]
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    limiter, window, key_id = RedisLimiter(client, period_ms=P), KeyWindow(P), uuid.uuid4().hex
    now, costs = BASE_MS, dict[str, int]()
    try:
        for i, (name, dt, a, b) in enumerate(ops):
            now += dt
            if name == "acquire":
                limits, lease_id = choices[i // 5 % len(choices)], f"req:{i}"  # ids with a colon, on purpose
                costs[lease_id] = a
                expected = window.acquire(now, limits, a, lease_id, b)
                assert await limiter.acquire(key_id, limits, a, lease_id, b, now_ms=now) == expected
            elif name == "release" and costs:
                lease_id = list(costs)[a % len(costs)]
                reserved = costs[lease_id] + a % 2
                window.release(now, lease_id, reserved, b)
                await limiter.release(key_id, lease_id, reserved, b, now_ms=now)
            elif name == "renew":
                lease_ids = [lease_id for j, lease_id in enumerate(costs) if j % 3 == a % 3]
                window.renew(now, lease_ids, b)
                await limiter.renew({key_id: lease_ids}, b, now_ms=now)
            held, stored, added = await snapshot_of(client, limiter, key_id, now)
            assert held == window.snapshot(now)
            assert stored == added
    finally:
        await client.delete(*limiter.keys_of(key_id))
        await client.aclose()


async def test_a_lost_or_garbled_token_sum_is_recounted(client: redis.asyncio.Redis) -> None:
    limiter, window, limits = RedisLimiter(client), KeyWindow(), Limits(tpm=100)
    for t, cost in ((0, 30), (10, 40)):
        window.acquire(BASE_MS + t, limits, cost, f"r{t}", TTL)
        await limiter.acquire("healing", limits, cost, f"r{t}", TTL, now_ms=BASE_MS + t)
    sums = limiter.keys_of("healing")[3]
    for damage in (client.delete(sums), client.set(sums, "garbage"), client.set(sums, "5:3")):  # a wrong count
        await damage
        expected = window.acquire(BASE_MS + 20, limits, 31, "over", TTL)
        assert expected.refused_by == "tokens"
        assert await limiter.acquire("healing", limits, 31, "over", TTL, now_ms=BASE_MS + 20) == expected
        assert await client.get(sums) == b"70:2"
        assert 0 < await client.pttl(sums) <= P


# ---------------------------------------------------------------- round trips, keys, clock


class CountingConnection(redis.asyncio.Connection):
    """Counts what goes over the wire: one send and one read make a round trip."""

    sends = 0
    reads = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.reads += 1
        return await super().read_response(*args, **kwargs)


def calls(stats: dict[str, Any], command: str) -> int:
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_one_acquire_is_one_round_trip(redis_url: str, client: redis.asyncio.Redis) -> None:
    counted = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    try:
        limiter, limits = RedisLimiter(counted), Limits(rpm=100, tpm=10_000, max_parallel=10)
        await client.script_flush()
        assert (await limiter.acquire("trips", limits, 10, "warm", TTL)).admitted  # NOSCRIPT, SCRIPT LOAD, EVALSHA
        before, CountingConnection.sends, CountingConnection.reads = await client.info("commandstats"), 0, 0
        decision = await limiter.acquire("trips", limits, 10, "measured", TTL)
        after = await client.info("commandstats")
        assert (decision.admitted, decision.remaining_requests, decision.remaining_tokens) == (True, 98, 9_980)
        assert (CountingConnection.sends, CountingConnection.reads) == (1, 1)
        assert calls(after, "evalsha") - calls(before, "evalsha") == 1
        assert calls(after, "eval") == calls(before, "eval")
        assert calls(after, "script|load") == calls(before, "script|load")
    finally:
        await counted.aclose()


async def test_renew_sends_every_key_in_one_pipeline(redis_url: str, client: redis.asyncio.Redis) -> None:
    counted = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    try:
        limiter, limits = RedisLimiter(counted), Limits(max_parallel=5)
        for key_id, lease_id in (("k1", "a"), ("k1", "b"), ("k2", "c")):
            await limiter.acquire(key_id, limits, 0, lease_id, TTL, now_ms=BASE_MS)
        CountingConnection.sends = 0
        await limiter.renew({"k1": ["a", "b", "gone"], "k2": ["c"], "k3": []}, 50_000, now_ms=BASE_MS + 1_000)
        assert CountingConnection.sends == 1  # the pipeline, in one write
        leases = [await client.zrange(limiter.keys_of(k)[2], 0, -1, withscores=True) for k in ("k1", "k2")]
        assert leases == [[(b"a", BASE_MS + 51_000), (b"b", BASE_MS + 51_000)], [(b"c", BASE_MS + 51_000)]]
        assert 30_000 < await client.pttl(limiter.keys_of("k1")[2]) <= 51_000
    finally:
        await counted.aclose()


async def test_batched_calls_survive_a_server_that_forgot_the_script(
    redis_url: str, client: redis.asyncio.Redis
) -> None:
    counted = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    try:
        limiter, limits = RedisLimiter(counted), Limits(tpm=1_000, max_parallel=5)
        for key_id, lease_id in (("m1", "a"), ("m2", "b")):
            await limiter.acquire(key_id, limits, 300, lease_id, TTL)  # release_many runs on the server's clock
        await client.script_flush()
        await limiter.renew({"m1": ["a"]}, 50_000)  # NOSCRIPT, then again as EVAL
        assert 0 < await client.pttl(limiter.keys_of("m1")[2]) - TTL <= 20_000  # renewed: it outlives its TTL
        await client.script_flush()
        CountingConnection.sends = 0
        await limiter.release_many([("m1", "a", 300, 100), ("m2", "b", 300, 0), ("m3", "nobody", 1, 0)])
        assert CountingConnection.sends == 4  # a call per key, the first refused (NOSCRIPT) and sent as EVAL
        for key_id, lease_id, left in (("m1", "a", b"100:1"), ("m2", "b", b"0:1")):
            _, _, leases, sums = limiter.keys_of(key_id)
            assert await client.get(sums) == left
            assert await client.zscore(leases, lease_id) is None
    finally:
        await counted.aclose()


async def test_keys_share_a_hash_tag_and_vanish_when_idle(client: redis.asyncio.Redis) -> None:
    limiter = RedisLimiter(client, prefix="tagged")
    await limiter.acquire("key-1", Limits(rpm=5, tpm=500, max_parallel=2), 7, "a", 45_000)
    names = sorted([name async for name in client.scan_iter(match="{tagged:key-1}*")])
    assert names == [b"{tagged:key-1}:p", b"{tagged:key-1}:r", b"{tagged:key-1}:s", b"{tagged:key-1}:t"]
    assert len({key_slot(name) for name in names}) == 1
    assert [0 < await client.pttl(name) <= limit for name, limit in zip(names, (45_000, P, P, P), strict=True)] == [
        True
    ] * 4
    brief = RedisLimiter(client, period_ms=200, prefix="brief")
    await brief.acquire("key-1", Limits(rpm=5, tpm=500, max_parallel=2), 7, "a", 200)
    assert await client.exists(*brief.keys_of("key-1")) == 4
    await brief.release("key-1", "a", 7, 3)  # the true-up rewrites the only token entry: it keeps its expiry
    _, tokens, _, sums = brief.keys_of("key-1")
    assert 0 < await client.pttl(tokens) <= 200
    assert 0 < await client.pttl(sums) <= 200
    await asyncio.sleep(0.4)
    assert await client.exists(*brief.keys_of("key-1")) == 0


async def test_the_servers_clock_is_used_when_no_time_is_given(client: redis.asyncio.Redis) -> None:
    async def server_ms() -> int:
        seconds, micros = await client.time()
        return int(seconds) * 1_000 + int(micros) // 1_000

    limiter = RedisLimiter(client)
    requests, _, leases, _ = limiter.keys_of("clock")
    start = await server_ms()
    assert (await limiter.acquire("clock", Limits(rpm=5, max_parallel=5), 0, "a", TTL)).reset_requests_ms == P
    end = await server_ms()
    admitted_at = int(await client.zscore(requests, "a"))
    assert start <= admitted_at <= end
    assert await client.zscore(leases, "a") == admitted_at + TTL
    await limiter.renew({"clock": ["a"]}, 90_000)
    assert start + 90_000 <= await client.zscore(leases, "a") <= await server_ms() + 90_000
    await limiter.release("clock", "a", 0, 0)
    assert await client.zscore(leases, "a") is None


async def test_an_unlimited_key_writes_nothing(client: redis.asyncio.Redis) -> None:
    limiter = RedisLimiter(client)
    decision = await limiter.acquire("free", Limits(), 10**9, "a", TTL, now_ms=BASE_MS)
    assert (decision.admitted, decision.limit_requests, decision.limit_tokens) == (True, None, None)
    assert await client.exists(*limiter.keys_of("free")) == 0


async def test_redis_errors_reach_the_caller() -> None:
    """Nothing listens on the port: the failover wrapper above must see redis-py's own error."""
    gone = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await RedisLimiter(gone).acquire("k", Limits(rpm=1), 0, "a", TTL)
    finally:
        await gone.aclose()
