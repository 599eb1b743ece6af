"""What `mobile-mm users ...` does: export what we hold about a user, erase a user.

Both are audited. The export is a data access (``user.export``, naming the user: the subject
asked for it). The erasure's own record (``user.erase``) names only the random token that
replaced the user everywhere, so the trail proves an erasure happened, when and by whom,
without keeping who was erased.

Example::

    text, ok = users_export("alice", out=Path("alice.json"))
    text, ok = users_delete("alice")
"""

from __future__ import annotations

import json
from pathlib import Path

from mobile_multimodal.ops.cli_actor import cli_actor
from mobile_multimodal.security.audit import AuditLog
from mobile_multimodal.store.database import Database, DatabaseError
from mobile_multimodal.store.users import UserNotFoundError, erase_user, export_user


def users_export(user: str, out: Path | None, db: Database | None = None) -> tuple[str, bool]:
    """JSON of everything held about ``user``: written to ``out``, or returned to print."""
    try:
        db = db or Database()
        data = export_user(db, user)
    except (DatabaseError, UserNotFoundError) as exc:
        return f"error: {exc}", False
    AuditLog(db).record(
        user_id=cli_actor(),
        action="user.export",
        resource=f"users/{user}",
        result="success",
        details={
            "user": user,
            "out": str(out) if out else "stdout",
            "audit_events": len(data["audit_events"]),
        },
    )
    text = json.dumps(data, indent=2)
    if out is None:
        return text, True
    out.write_text(text + "\n")
    return f"wrote what is held about {user} to {out}", True


def users_delete(user: str, db: Database | None = None) -> tuple[str, bool]:
    """Erase ``user``: keys and user row deleted, audit and export rows anonymised."""
    try:
        db = db or Database()
        report = erase_user(db, user)
    except (DatabaseError, UserNotFoundError) as exc:
        return f"error: {exc}", False
    AuditLog(db).record(
        user_id=cli_actor(),
        action="user.erase",
        resource=f"users/{report.token}",
        result="success",
        details=report.counts(),
    )
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report.counts().items())
    return f"erased the user: {counts}; the audit trail now calls them {report.token}", True
