"""What do API keys and limits cost a proxied request?

Four gateways in front of one fake upstream (benchmarks.fake_upstream), measured in alternating
rounds so drift hits all; each ratio is the median of the rounds' ratios to the first:

* ``off``      no key exists (the baseline: what every request cost before keys);
* ``auth``     keys on, the key has no limits: a SHA-256 and a dict lookup per request;
* ``local``    keys and limits (rpm, tpm, max_parallel) in a local SQLite store, decided here;
* ``redis``    the same limits shared through a real redis-server: one Lua call to admit; the
               unused tokens and the parallel slot go back in batched pipelines.

Target: ``redis`` costs at most 1.15x ``off`` in gateway CPU per request. Also printed: Redis
script calls per request (INFO commandstats before and after) and Redis's own CPU per request.

Run: ``python -m benchmarks.bench_tenancy [--requests N]`` (``make bench-tenancy``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import redis

from benchmarks.bench_core import (
    PROXY_WARMUP_REQUESTS,
    REQUEST_TIMEOUT_S,
    STREAM_CHUNKS,
    UPSTREAM_MODEL_ID,
    chat_body,
    check_proxied_reply,
    cpu_seconds,
    post_json_timed,
    upstream_model_yaml,
)
from benchmarks.servers import HOST, BenchmarkError, free_port, running_gateway, running_process, running_upstream
from konsilium.tenancy.keys import make_key
from konsilium.tenancy.redis_store import RedisKeyStore
from konsilium.tenancy.sqlite_store import SqliteKeyStore

ROUNDS = 10
TARGET_RATIO = 1.15
LIMITS = {"rpm": 1_000_000, "tpm": 1_000_000_000, "max_parallel": 64}  # never reached: the cost is measured


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchmarkError("redis-server is not installed (make test installs it)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    with running_process(cmd, workdir / "redis.log") as proc:
        client = redis.Redis(host=HOST, port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if proc.poll() is not None:
                raise BenchmarkError("redis-server exited")
            time.sleep(0.05)
        client.close()
        yield port


Gateway = tuple[str, str, int, str]  # label, secret, pid, chat completions URL


def _gateways(stack: contextlib.ExitStack, tmp: Path, upstream: int, redis_port: int) -> list[Gateway]:
    """Each gateway, with its keys written before it starts."""
    out: list[Gateway] = []
    for label in ("off", "auth", "local", "redis"):
        workdir = tmp / label
        workdir.mkdir()
        extra = f"data_dir: {workdir / 'data'}\n"
        secret = ""
        if label == "redis":
            extra += f"redis_url: redis://{HOST}:{redis_port}/0\n"
            store: RedisKeyStore | SqliteKeyStore = RedisKeyStore(redis.Redis(host=HOST, port=redis_port))
        else:
            store = SqliteKeyStore(workdir / "data" / "keys.sqlite", create=label != "off")
        if label != "off":
            key, secret = make_key(f"bench-{label}", **({} if label == "auth" else LIMITS))
            store.add(key)
        store.close()
        base, pid = stack.enter_context(running_gateway(upstream_model_yaml(upstream) + extra, workdir))
        out.append((label, secret, pid, f"{base}/v1/chat/completions"))
    return out


def cpu_ms(client: httpx.Client, url: str, secret: str, body: bytes, requests: int, pid: int) -> float:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    before = cpu_seconds(pid)
    for _ in range(requests):
        post_json_timed(client, url, body, headers)
    return (cpu_seconds(pid) - before) * 1e3


def redis_calls(port: int) -> tuple[int, float]:
    """Round trips the limiter has made (its script calls) and Redis's CPU seconds, so far."""
    client = redis.Redis(host=HOST, port=port)
    stats, cpu = client.info("commandstats"), client.info("cpu")
    client.close()
    calls = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run(requests: int) -> None:
    body = msgspec.json.encode(chat_body(UPSTREAM_MODEL_ID, stream=False))
    with tempfile.TemporaryDirectory(prefix="bench-tenancy-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        upstream = stack.enter_context(running_upstream(STREAM_CHUNKS, tmp))
        redis_port = stack.enter_context(running_redis(tmp))
        gateways = _gateways(stack, tmp, upstream, redis_port)
        client = stack.enter_context(httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False))
        for _, secret, pid, url in gateways:
            headers = {"authorization": f"Bearer {secret}"} if secret else {}
            check_proxied_reply(post_json_timed(client, url, body, headers)[1], STREAM_CHUNKS)
            cpu_ms(client, url, secret, body, PROXY_WARMUP_REQUESTS, pid)
        per_round = max(1, requests // ROUNDS)
        rounds: list[list[float]] = []
        redis_before = redis_calls(redis_port)
        for _ in range(ROUNDS):
            rounds.append([cpu_ms(client, url, secret, body, per_round, pid) for _, secret, pid, url in gateways])
        redis_after = redis_calls(redis_port)
    count = per_round * ROUNDS
    print(f"gateway CPU per proxied request ({count} requests each; median of {ROUNDS} rounds' ratios to off)")
    for i, (label, *_) in enumerate(gateways):
        ratio = statistics.median(r[i] / r[0] for r in rounds)
        verdict = (
            f"(target <= {TARGET_RATIO}) {'PASS' if ratio <= TARGET_RATIO else 'MISS'}" if label == "redis" else ""
        )
        print(f"  {label:<8}{sum(r[i] for r in rounds) / count:8.3f} ms  x{ratio:.3f} {verdict}")
    calls = (redis_after[0] - redis_before[0]) / count
    redis_cpu_us = (redis_after[1] - redis_before[1]) * 1e6 / count
    print(f"redis: {calls:.2f} script calls per request (admit + give back, batched), {redis_cpu_us:.0f} us of its CPU")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The cost of API keys and limits per proxied request.")
    parser.add_argument("--requests", type=int, default=3000, help="per gateway (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        run(args.requests)
    except BenchmarkError as exc:
        print(f"bench_tenancy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
