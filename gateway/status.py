"""`GET /admin/status`: one snapshot for the status page (`/ui`, gateway/ui.py) — every model as
`GET /admin/models` shows it (state, in flight, queued, memory, breaker), the memory budget as
`GET /admin/budget` shows it, and the recent requests (gateway/recent.py), newest first.

Behind the admin API's guards: loopback only (unless `admin_loopback_only: false`) and, once
API keys exist, an admin key (gateway/auth.py guards every `/admin/` path).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, get

from gateway.admin import admin_views, loopback_only
from gateway.models import json_response, services_of
from gateway.recent import RecentRequest
from model_store.views import BudgetView

AnyRequest = Request[Any, Any, Any]


class Status(msgspec.Struct, frozen=True):
    time: float  # the server's wall clock, seconds since the epoch (the page's "ago" is against it)
    started: int  # when this process started, likewise
    record_content: bool  # whether recent requests carry `prompt` and `answer`
    models: list[dict[str, object]]
    budget: BudgetView
    recent: list[RecentRequest]


@get("/admin/status", guards=[loopback_only])
async def admin_status(request: AnyRequest) -> Response[bytes]:
    services = services_of(request)
    recent = services.recent
    return json_response(
        Status(
            time=round(time.time(), 3),
            started=services.started,
            record_content=recent is not None and recent.record_content,
            models=admin_views(services),
            budget=services.store.budget_view(),
            recent=[] if recent is None else recent.newest_first(),
        )
    )
