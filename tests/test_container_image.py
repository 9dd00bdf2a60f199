"""The image `make image` built, run as a user would run it: `podman run -p PORT:8400 IMAGE` with
no configuration answers a chat through the OpenAI SDK, as a non-root user with a worker process
for the built-in model, reports healthy, and a stop ends every process in it cleanly (SIGTERM
through tini, not a kill after the grace period: the worker exits 0 before the server does).
And the Helm chart's rendered config and container args run in it as a pod would run them.
`make image-test` runs these; they are not part of `make test` (the image takes minutes to build).

podman runs with runc and lowered ulimits: crun fails on this machine's cgroups, and without
CAP_SYS_RESOURCE the default ulimits cannot be raised.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import helm_python
import httpx
import openai
import pytest

from tests.servers import MODEL_ID, free_port
from tests.test_helm_chart import CHART, gateway_container, one, render

pytestmark = pytest.mark.container
IMAGE = os.environ.get("KONSILIUM_IMAGE", "localhost/konsilium:latest")
PODMAN = ("podman", "--runtime", "runc")
STOP_GRACE_S = 30
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


def podman(*args: str, check: bool = True) -> str:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def wait_healthy(base_url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the container was not ready within {timeout_s:.0f} s")


def logs_of(name: str) -> str:
    """The container's output (podman writes the container's stderr to its own)."""
    done = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout + done.stderr


@pytest.fixture
def container() -> Iterator[tuple[str, str]]:
    exists = subprocess.run([*PODMAN, "image", "exists", IMAGE], capture_output=True, timeout=60, check=False)
    assert exists.returncode == 0, f"no image {IMAGE}: run `make image` first"
    name, port = f"konsilium-test-{uuid.uuid4().hex[:8]}", free_port()
    podman("run", "-d", "--name", name, *ULIMITS, "-p", f"127.0.0.1:{port}:8400", IMAGE)
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_the_image_answers_with_no_configuration_and_stops_cleanly(container: tuple[str, str]) -> None:
    name, base_url = container
    started = time.monotonic()
    wait_healthy(base_url)
    ready_s = time.monotonic() - started
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert reply.model == MODEL_ID
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")

    assert podman("exec", name, "id", "-u") == "10001"
    processes = podman("top", name, "user", "args")
    assert "konsilium serve --host 0.0.0.0 --port 8400" in processes
    assert "model_store.llama_cpp.worker" in processes, processes  # the built-in model's worker
    assert podman("healthcheck", "run", name, check=False) == ""  # the image's HEALTHCHECK passes

    stopping = time.monotonic()
    podman("stop", "-t", str(STOP_GRACE_S), name)
    stop_s = time.monotonic() - stopping
    logs = logs_of(name)
    # 143: uvicorn shuts down gracefully on SIGTERM, then re-raises it (137 would be a kill)
    assert podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name) == "exited 143", logs
    assert stop_s < STOP_GRACE_S  # ended by SIGTERM, not killed when the grace ran out
    assert re.search(rf"llama.cpp worker for {MODEL_ID} \(pid \d+\) exited with 0", logs), logs
    assert "Application shutdown complete." in logs
    print(f"\nready in {ready_s:.1f} s, stopped in {stop_s:.1f} s")


def test_the_image_serves_the_helm_charts_config_with_the_admin_key_from_the_environment(tmp_path: Path) -> None:
    """The chart's rendered ConfigMap and container args, run in the image as the pod would run
    them: the config mounted at /etc/konsilium, the admin key as the Secret's variable."""
    with helm_python.Chart.load(CHART) as chart:
        objects = render(chart, {"secrets": {"adminKey": {"existingSecret": "konsilium-admin"}}})
    container = gateway_container(objects)
    (tmp_path / "konsilium.yaml").write_text(one(objects, "ConfigMap")["data"]["konsilium.yaml"], encoding="utf-8")
    tmp_path.chmod(0o755)
    (tmp_path / "konsilium.yaml").chmod(0o644)
    secret = "ksk-" + "a" * 43
    [env] = container["env"]
    name, port = f"konsilium-test-{uuid.uuid4().hex[:8]}", free_port()
    podman(
        "run", "-d", "--name", name, *ULIMITS, "-p", f"127.0.0.1:{port}:8400",
        "-v", f"{tmp_path}:/etc/konsilium:ro", "-e", f"{env['name']}={secret}", IMAGE, *container["args"],
    )  # fmt: skip
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url)
        anonymous = httpx.get(f"{base_url}/v1/models", timeout=10)
        key = {"authorization": f"Bearer {secret}"}
        metrics = httpx.get(f"{base_url}/metrics", headers=key, timeout=10)  # what the ServiceMonitor scrapes
        admin = httpx.get(f"{base_url}/admin/keys", headers=key, timeout=10)
        models = httpx.get(f"{base_url}/v1/models", headers=key, timeout=10)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
    assert (anonymous.status_code, metrics.status_code, models.status_code) == (401, 200, 200)
    assert "konsilium_requests_total" in metrics.text
    assert MODEL_ID in [m["id"] for m in models.json()["data"]]
    # the admin API stays loopback-only (admin_loopback_only): reached by `kubectl port-forward` or exec
    assert (admin.status_code, admin.json()["error"]["code"]) == (403, "permission_denied")
