"""The admin API answers loopback clients only, unless the config says otherwise (in-process app;
Litestar's TestClient connects as host "testclient", i.e. not loopback)."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from konsilium.config import Config


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
