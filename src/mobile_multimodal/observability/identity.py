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


def instance_id() -> str:
    """``host-pid``: one id per serving process, so ``--workers N`` stay distinguishable.

    Not cached: a forked worker must not inherit its parent's pid.
    """
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"
