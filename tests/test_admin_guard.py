"""The admin API answers loopback clients only, unless the config says otherwise (in-process app;
Litestar's TestClient connects as host "testclient", i.e. not loopback). Loopback means the
socket's peer, or the client a configured trusted proxy forwarded for: real server processes,
started with FORWARDED_ALLOW_IPS=* (which once made any X-Forwarded-For believed)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from litestar.testing import TestClient

from entrypoints.app import create_app
from gateway.peer import forwarded_client, parse_networks
from konsilium.config import Config, load_config
from konsilium.errors import ConfigError
from tests.servers import run_server


@pytest.mark.parametrize("path", ["/admin/models", "/admin/budget"])
def test_non_loopback_clients_are_refused(path: str) -> None:
    with TestClient(app=create_app(Config(models=[], memory_budget_mb=100))) as client:
        response = client.get(path)
        assert response.status_code == 403
        assert response.json() == {
            "error": {
                "message": "the admin API answers loopback clients only (admin_loopback_only: true)",
                "type": "invalid_request_error",
                "param": None,
                "code": "permission_denied",
            }
        }
        assert client.get("/v1/models").json() == {"object": "list", "data": []}


def test_the_guard_can_be_lifted() -> None:
    config = Config(models=[], memory_budget_mb=100, admin_loopback_only=False)
    with TestClient(app=create_app(config)) as client:
        assert client.get("/admin/budget").json() == {
            "total_mb": 100, "source": "config", "device": "", "used_mb": 0, "foreign_mb": 0, "free_mb": 100,
            "models": {},
        }  # fmt: skip


# --- who the client is: the socket's peer, unless a configured proxy forwarded for it -----------

FORBIDDEN = {
    "error": {
        "message": "the admin API answers loopback clients only (admin_loopback_only: true)",
        "type": "invalid_request_error",
        "param": None,
        "code": "permission_denied",
    }
}
BUDGET = {
    "total_mb": 100, "source": "config", "device": "", "used_mb": 0, "foreign_mb": 0, "free_mb": 100, "models": {},
}  # fmt: skip
NGINX = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("203.0.113.7", ["127.0.0.1"], "203.0.113.7"),  # an untrusted peer's header is ignored
        ("127.0.0.1", [], "127.0.0.1"),  # a trusted proxy's own request
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["127.0.0.1, 203.0.113.7"], "203.0.113.7"),  # the client's own claim is left of it
        ("127.0.0.1", ["198.51.100.1, 203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # two trusted hops
        ("127.0.0.1", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # two header lines, in order
        ("127.0.0.1", ["10.1.2.3, 127.0.0.1"], "10.1.2.3"),  # every hop trusted: the first
        ("127.0.0.1", ["localhost"], "localhost"),  # not an address: taken as written (never loopback)
        ("127.0.0.1", [" , "], "127.0.0.1"),
        ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # IPv4-mapped is its IPv4
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(peer: str, forwarded_for: list[str], client: str) -> None:
    assert forwarded_client(peer, forwarded_for, NGINX) == client


@pytest.mark.parametrize("proxy", ["10.0.0.300", "nginx", "10.0.0.0/33", ""])
def test_a_bad_trusted_proxy_is_a_config_error_naming_its_path(tmp_path: Path, proxy: str) -> None:
    path = tmp_path / "konsilium.yaml"
    path.write_text(yaml.safe_dump({"models": [], "trusted_proxies": ["127.0.0.1", proxy]}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}: trusted_proxies[1]: {proxy!r} is not an IP address or a CIDR network"]


def test_trusted_proxies_accept_addresses_and_networks(tmp_path: Path) -> None:
    path = tmp_path / "konsilium.yaml"
    path.write_text("models: []\ntrusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1', 'fd00::/8']\n", encoding="utf-8")
    assert load_config(path).trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]


def outbound_address() -> str | None:
    """This machine's address on a non-loopback interface (none sent: a UDP connect only routes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture
def forwarded_allow_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """What made uvicorn believe any X-Forwarded-For: the servers started here inherit it."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")


def budget(host: str, port: int, headers: dict[str, str] | None = None) -> tuple[int, object]:
    response = httpx.get(f"http://{host}:{port}/admin/budget", headers=headers, timeout=30)
    return response.status_code, response.json()


@pytest.mark.usefixtures("forwarded_allow_all")
def test_forwarding_headers_are_ignored_without_trusted_proxies(tmp_path: Path) -> None:
    with run_server(tmp_path, [], memory_budget_mb=100, host="0.0.0.0") as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        assert budget("127.0.0.1", port, {"x-forwarded-for": "203.0.113.7"}) == (200, BUDGET)  # the peer: loopback
        address = outbound_address()
        if address is None:
            pytest.skip("no non-loopback interface to connect from")
        assert budget(address, port) == (403, FORBIDDEN)
        assert budget(address, port, {"x-forwarded-for": "127.0.0.1"}) == (403, FORBIDDEN)
        assert budget(address, port, {"x-forwarded-for": "localhost", "forwarded": "for=127.0.0.1"}) == (403, FORBIDDEN)


@pytest.mark.usefixtures("forwarded_allow_all")
def test_behind_a_trusted_proxy_the_forwarded_client_is_judged(tmp_path: Path) -> None:
    with run_server(tmp_path, [], memory_budget_mb=100, trusted_proxies=["127.0.0.1"]) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        assert budget("127.0.0.1", port) == (200, BUDGET)  # the proxy's own request (or a local client)
        assert budget("127.0.0.1", port, {"x-forwarded-for": "203.0.113.7"}) == (403, FORBIDDEN)
        assert budget("127.0.0.1", port, {"x-forwarded-for": "127.0.0.1, 203.0.113.7"}) == (403, FORBIDDEN)
        assert budget("127.0.0.1", port, {"x-forwarded-for": "localhost"}) == (403, FORBIDDEN)
        assert budget("127.0.0.1", port, {"x-forwarded-for": "127.0.0.1"}) == (200, BUDGET)  # a local client
        models = httpx.get(f"{server.v1}/models", headers={"x-forwarded-for": "203.0.113.7"}, timeout=30)
        assert (models.status_code, models.json()) == (200, {"object": "list", "data": []})
