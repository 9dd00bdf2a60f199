"""`python -m loadtests.run`: a bounded Locust run against Konsilium, then its figures.

Without `--host` it starts Konsilium with the built-in configuration (SmolLM2, as `make run`)
on a free loopback port and stops it afterwards. `--smoke` is the CI-sized run: two users and
at most 40 chat requests. The report (HTML and CSV) goes to loadtests/report/. Exit status:
Locust's (non-zero when any request failed), or 1 if the run could not happen.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.servers import HOST, BenchmarkError, free_port, running_process, wait_http_ok

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "loadtests" / "report"
SMOKE = {"users": "2", "spawn_rate": "2", "run_time": "120s", "max_requests": "40"}


@contextlib.contextmanager
def konsilium(host: str | None) -> Iterator[str]:
    """The instance to load: the one given, or a local one started here (and always stopped)."""
    if host:
        yield host
        return
    port = free_port()
    REPORT.mkdir(parents=True, exist_ok=True)
    log = REPORT / "konsilium.log"
    cmd = [sys.executable, "-m", "entrypoints.cli", "serve", "--host", HOST, "--port", str(port)]
    with running_process(cmd, log) as proc:
        wait_http_ok(f"http://{HOST}:{port}/ready", proc, 120, log)
        yield f"http://{HOST}:{port}"


def run_locust(host: str, smoke: bool, extra: list[str]) -> int:
    REPORT.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "locust", "--config", str(ROOT / "loadtests" / "locust.conf"), "--host", host,
           "--csv", str(REPORT / "konsilium"), "--html", str(REPORT / "konsilium.html")]  # fmt: skip
    env = dict(os.environ)
    if smoke:
        cmd += ["--users", SMOKE["users"], "--spawn-rate", SMOKE["spawn_rate"], "--run-time", SMOKE["run_time"]]
        env["KONSILIUM_LOAD_MAX_REQUESTS"] = SMOKE["max_requests"]
    return subprocess.run([*cmd, *extra], cwd=ROOT, env=env, check=False).returncode


def summary() -> str:
    """The run's figures from Locust's CSV: requests, failures, and the custom TTFT / ITL."""
    with (REPORT / "konsilium_stats.csv").open(newline="") as stats:
        rows = list(csv.DictReader(stats))
    lines = [f"{'type':<6}{'name':<16}{'requests':>9}{'failures':>9}{'median ms':>10}{'p95 ms':>9}{'req/s':>8}"]
    for row in rows:
        lines.append(
            f"{row['Type']:<6}{row['Name']:<16}{row['Request Count']:>9}{row['Failure Count']:>9}"
            f"{float(row['Median Response Time']):>10.1f}{float(row['95%']):>9.0f}{float(row['Requests/s']):>8.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests.run")
    parser.add_argument("--host", help="a deployed Konsilium (default: start one here)")
    parser.add_argument("--smoke", action="store_true", help="CI size: 2 users, at most 40 chat requests")
    args, extra = parser.parse_known_args(argv)
    try:
        with konsilium(args.host) as host:
            code = run_locust(host, args.smoke, extra)
    except BenchmarkError as exc:
        print(f"load test could not run: {exc}", file=sys.stderr)
        return 1
    print(summary())
    print(f"report: {REPORT / 'konsilium.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
