"""Where an address is: this machine (loopback) or outside it."""

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
