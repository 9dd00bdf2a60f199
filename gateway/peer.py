"""Who the client is: the socket's peer, unless that peer is a proxy the config trusts.

uvicorn runs with `proxy_headers=False` (so `FORWARDED_ALLOW_IPS` cannot make a forged
`X-Forwarded-For` count); this middleware is the one place a forwarding header is read. When the
peer is in `trusted_proxies`, the client is the rightmost `X-Forwarded-For` hop that is not a
trusted proxy itself (each proxy appends the address it saw, so hops left of it are whatever the
client claimed), and `scope["client"]` is rewritten to it. A hop that is not an IP address ends
the walk and becomes the client as written: it is nobody's address, so it is never loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from litestar.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """The config's `trusted_proxies` (validated when the config was loaded)."""
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def ip_of(host: str) -> Address | None:
    """An IP literal, IPv4-mapped IPv6 (`::ffff:127.0.0.1`) as the IPv4 it carries; else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(host: str, networks: Sequence[Network]) -> bool:
    address = ip_of(host)
    return address is not None and any(address in network for network in networks)


def forwarded_client(peer: str, forwarded_for: Sequence[str], networks: Sequence[Network]) -> str:
    """The client's address given the socket peer and the `X-Forwarded-For` values, in order."""
    if not is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, networks):
            return hop
    return hops[0] if hops else peer  # every hop a trusted proxy: the first is the client


class ForwardedClientMiddleware:
    """Pure ASGI middleware: `scope["client"]` becomes the client a trusted proxy forwarded for."""

    def __init__(self, app: ASGIApp, trusted_proxies: Sequence[str]) -> None:
        self.app = app
        self.networks = parse_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if self.networks and client and scope["type"] in ("http", "websocket"):
            values = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
            host = forwarded_client(client[0], values, self.networks) if values else client[0]
            if host != client[0]:
                scope["client"] = (host, 0)  # the port a proxy saw is not forwarded
        await self.app(scope, receive, send)
