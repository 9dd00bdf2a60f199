"""Start and stop the servers a benchmark talks to: Konsilium and the fake upstream.

Each runs as its own process in its own session, so that stopping it also stops what it spawned
(Konsilium's llama.cpp workers): on two cores a leftover worker would skew every later figure.
Every process is stopped by its id in a ``finally``, whatever happened.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
UPSTREAM_READY_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.1
STOP_GRACE_S = 10.0


class BenchmarkError(Exception):
    """A part could not be measured (a server did not start, a reply was wrong)."""


def free_port() -> int:
    """A port the OS reports free right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, and anything it spawned (its own process group).

    The gateway runs llama.cpp workers as child processes; killing only the gateway's pid
    would leave them holding both cores for the next part.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_process(
    cmd: list[str], log_path: Path, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` in its own session with output to ``log_path``; always stop it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def log_tail(log_path: Path, lines: int = 30) -> str:
    """The end of a server's log, to put in an error message."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail fast if the process exits first."""
    attempts = max(1, int(timeout_s / POLL_INTERVAL_S))
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        for _ in range(attempts):
            code = proc.poll()
            if code is not None:
                raise BenchmarkError(
                    f"server exited with {code} before {url} was ready:\n{log_tail(log)}",
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(POLL_INTERVAL_S)
    raise BenchmarkError(f"{url} not ready after {timeout_s:g} s:\n{log_tail(log)}")


def require_konsilium() -> None:
    """Fail with a clear message when the gateway package is not there yet."""
    try:
        found = importlib.util.find_spec("entrypoints.cli") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise BenchmarkError("package konsilium (entrypoints.cli) is not importable")


def gateway_config(port: int, model_yaml: str) -> str:
    """A Konsilium YAML config with one model; strings are JSON-quoted (valid YAML)."""
    return f"host: {HOST}\nport: {port}\nmodels:\n{model_yaml}"


@contextlib.contextmanager
def running_gateway(model_yaml: str, workdir: Path) -> Iterator[tuple[str, int]]:
    """Start ``entrypoints.cli serve`` and wait for ``/ready``; yields (base URL, pid)."""
    require_konsilium()
    port = free_port()
    config = workdir / "konsilium.yaml"
    config.write_text(gateway_config(port, model_yaml))
    log = workdir / "konsilium.log"
    cmd = [
        sys.executable,
        "-m",
        "entrypoints.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with running_process(cmd, log) as proc:
        base = f"http://{HOST}:{port}"
        wait_http_ok(f"{base}/ready", proc, READY_TIMEOUT_S, log)
        yield base, proc.pid


@contextlib.contextmanager
def running_upstream(chunks: int, workdir: Path) -> Iterator[int]:
    """Start the fake upstream as its own process; yields its port."""
    port = free_port()
    log = workdir / "upstream.log"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.fake_upstream",
        "--host",
        HOST,
        "--port",
        str(port),
        "--chunks",
        str(chunks),
    ]
    with running_process(cmd, log) as proc:
        wait_http_ok(f"http://{HOST}:{port}/v1/models", proc, UPSTREAM_READY_TIMEOUT_S, log)
        yield port
