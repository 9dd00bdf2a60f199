"""Where an address is: this machine (loopback), a private network (a cluster's own), or outside."""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def is_outside(url: str) -> bool:
    """A URL whose host is not this machine (asked per target per request: parsed once)."""
    return not is_loopback(urlsplit(url).hostname or "")


# names that resolve inside a cluster or a private network only: a Kubernetes Service's short
# name (no dot) or its cluster domain, and the names reserved for private use
PRIVATE_SUFFIXES = (".svc", ".cluster.local", ".internal", ".home.arpa", ".lan")


def is_private(url: str) -> bool:
    """A URL on a private network: an RFC 1918 / unique-local / link-local address, or a name only
    a private network resolves. A manifest may declare such a backend `cloud: false` (a vLLM pod
    beside the gateway); a public host never can."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_private
    except ValueError:
        return "." not in host or host.endswith(PRIVATE_SUFFIXES)
