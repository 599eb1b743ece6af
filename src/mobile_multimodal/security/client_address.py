"""The client address that security decisions and the audit trail use: a valid IP, or a marker.

The address comes from the connection (``scope["client"]``), which uvicorn rewrites from
``X-Forwarded-For`` only for proxies listed in ``MOBILE_MM_TRUSTED_PROXIES`` (server.py; none by
default). Even a trusted proxy passes on whatever its client wrote, so the value is parsed as an
IP address before anything records it: anything else is audited as ``"invalid"`` (one bucket, so
rotating garbage through a proxy does not make a new source per request, and no string a client
chose, ``<script>`` included, reaches the audit trail or the logs).

Example::

    client_ip({"client": ("203.0.113.9", 4000)})   # "203.0.113.9"
    client_ip({"client": ("<script>", 0)})          # "invalid"
    client_ip({})                                   # "unknown" (e.g. a Unix socket)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

INVALID = "invalid"
UNKNOWN = "unknown"


def normalize_ip(value: str) -> str:
    """``value`` as a canonical IP address (``::ffff:1.2.3.4`` -> ``1.2.3.4``), else ``"invalid"``."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return INVALID
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def client_ip(scope: Mapping[str, Any]) -> str:
    """The request's client address, validated (see the module docstring)."""
    client = scope.get("client")
    if not client:
        return UNKNOWN
    return normalize_ip(str(client[0]))
