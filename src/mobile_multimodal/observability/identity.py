"""Who is emitting telemetry: service name, version and instance id, shared by logs, traces and metrics.

Example::

    from mobile_multimodal.observability.identity import SERVICE_NAME, instance_id, service_version
    SERVICE_NAME, service_version(), instance_id()   # ('mobile-multimodal-llm', '0.1.0', 'host-1234')
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from importlib import metadata

SERVICE_NAME = "mobile-multimodal-llm"


@lru_cache(maxsize=1)
def service_version() -> str:
    """The installed distribution's version (the package's own ``__version__`` when not installed)."""
    try:
        return metadata.version("mobile-multimodal-llm")
    except metadata.PackageNotFoundError:
        from mobile_multimodal import __version__

        return str(__version__)


_instance_override: str | None = None


def instance_id() -> str:
    """``host-pid``: one id per serving process, so ``--workers N`` stay distinguishable.

    Not cached: a forked worker must not inherit its parent's pid.
    """
    if _instance_override is not None:
        return _instance_override
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


def set_instance_id(value: str) -> None:
    """Speak for another process: a helper process (span export) logs as the server it serves."""
    global _instance_override
    _instance_override = value
