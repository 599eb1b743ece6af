"""Who runs an operator command: the audit identity of the CLI's own events.

Example::

    AuditLog(db).record(user_id=cli_actor(), action="db.backup", resource=url, result="success")
"""

from __future__ import annotations

import getpass


def cli_actor() -> str:
    """Audit identity of whoever runs the CLI."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli:unknown"
