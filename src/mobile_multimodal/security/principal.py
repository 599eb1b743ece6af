"""`Principal`: who is calling, as every layer above sees it (routes, metrics, audit rows).

One type for the whole service: the key check returns it, the routes take it from the auth
dependency (``require_api_key`` / ``require_admin`` in ``auth_dependencies.py``), and the
metrics use its ``user_type`` (free|pro) as the user tier label.

Example::

    principal = Principal(user_id="alice", user_type="pro", key_id="k_1a2b")
    ANONYMOUS.user_id                   # "anonymous": every caller while MOBILE_MM_AUTH=disabled
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``user_type`` (free|pro) is the metrics' user tier label; ``key_id`` is
    None for the anonymous caller (auth disabled), whose requests are not rate limited."""

    user_id: str
    user_type: str
    key_id: str | None
    is_admin: bool = False


ANONYMOUS = Principal(user_id="anonymous", user_type="free", key_id=None)
