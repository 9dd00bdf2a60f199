"""A real redis-server (Debian's, installed by `make test`) on a free loopback port.

Started without persistence in its own session, stopped by its pid whatever the test did.
`pause()` / `resume()` make it hang (SIGSTOP / SIGCONT: connections open, nothing answered);
`kill()` / `start()` take it away and bring it back on the same port, empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.servers import free_port

READY_TIMEOUT_S = 10.0


class RedisServer:
    def __init__(self, directory: Path, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make test` installs it (Debian's redis-server)")
        self.binary, self.directory, self.port = binary, directory, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", str(self.directory)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self._pong():
                return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not answer PING")

    def _pong(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot die of SIGTERM
            process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def run_redis(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
