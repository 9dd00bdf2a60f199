"""A vLLM OpenAI server that Konsilium starts, watches and stops.

Started as `PYTHON -m vllm.entrypoints.openai.api_server` in its own session (vLLM runs its
engine in a child process, so stopping signals the whole group), on a free loopback port. Its
output goes to our log line by line (start-up progress included); the last lines are kept for
the error when it fails to start. Ready when `GET /v1/models` answers 200.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import time

import aiohttp

from konsilium.errors import BackendUnavailableError

log = logging.getLogger(__name__)

READY_POLL_S = 0.5
TAIL_LINES = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VllmProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, model_id: str) -> None:
        self._proc = proc
        self.port = port
        self._model_id = model_id
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._relay = asyncio.create_task(self._relay_output(), name=f"vllm-log-{model_id}")

    @classmethod
    async def start(cls, model_id: str, argv: list[str], env: dict[str, str], timeout_s: float) -> VllmProcess:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *argv, "--host", "127.0.0.1", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip
        server = cls(proc, port, model_id)
        log.info("vLLM for %s starting (pid %d, port %d)", model_id, proc.pid, port)
        try:
            await server._wait_ready(timeout_s)
        except BaseException:
            await server.stop(grace_s=2.0)
            raise
        return server

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait(self) -> int:
        return await self._proc.wait()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; returns when it is reaped."""
        if self._proc.returncode is None:
            _signal_group(self._proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), grace_s)
            except TimeoutError:
                log.warning("vLLM for %s ignored SIGTERM for %.0f s; killing it", self._model_id, grace_s)
                _signal_group(self._proc.pid, signal.SIGKILL)
                await self._proc.wait()
        _signal_group(self._proc.pid, signal.SIGKILL)  # the engine child, should it outlive its parent
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise BackendUnavailableError(
                        self._failure(f"vLLM exited ({self._proc.returncode}) while starting")
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/v1/models") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(READY_POLL_S)
        raise BackendUnavailableError(self._failure(f"vLLM did not become ready within {timeout_s:g} s"))

    def _failure(self, what: str) -> str:
        last = " | ".join(line for line in self._tail if line.strip())[-1500:]
        return f"model {self._model_id!r} failed to load: {what}; last output: {last or 'none'}"

    async def _relay_output(self) -> None:
        """Read in chunks, not lines: progress bars redraw with `\r` and may never end a line."""
        assert self._proc.stdout is not None
        pending = b""
        while chunk := await self._proc.stdout.read(65536):
            *lines, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            pending = pending[-65536:]
            for line in lines:
                text = line.decode("utf-8", errors="replace").rstrip()
                if text:
                    self._tail.append(text)
                    log.info("[vllm %s] %s", self._model_id, text)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
