"""The status page: `GET /ui` and its two assets, shipped inside the package (gateway/static/:
one HTML page, a stylesheet, vanilla JavaScript; no build step, nothing from a CDN).

The page polls `GET /admin/status` every second and asks `POST /admin/route` to explain a
prompt, so everything it shows comes through the admin API's guards. Its own files carry the
same loopback guard. They hold no data, so the key check (gateway/auth.py, `/admin/` paths)
does not cover them: a browser cannot send a key when it opens a URL. With keys on, the page
asks for an admin key and sends it as `Authorization: Bearer` (kept in the tab's session
storage only).
"""

from __future__ import annotations

from importlib import resources

from litestar import Response, get
from litestar.params import FromPath

from gateway.admin import loopback_only
from konsilium.errors import NotFoundError

ASSETS = {"ui.css": "text/css", "ui.js": "text/javascript"}  # Litestar adds the charset (utf-8)
HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # its own script and style only: no inline code, no other origin, no framing
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def _asset(name: str, media_type: str) -> Response[bytes]:
    content = (resources.files("gateway") / "static" / name).read_bytes()
    return Response(content=content, media_type=media_type, headers=HEADERS)


@get("/ui", guards=[loopback_only])
async def page() -> Response[bytes]:
    return _asset("index.html", "text/html")


@get("/ui/{name:str}", guards=[loopback_only])
async def asset(name: FromPath[str]) -> Response[bytes]:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError(f"No such file: /ui/{name}.")
    return _asset(name, media_type)
