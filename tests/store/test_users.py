"""Users: keys belong to users; export what is held about one; erasure anonymises the trail."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from mobile_multimodal.security.api_keys import create_key, revoke_key
from mobile_multimodal.store import ApiKey, AuditEvent, Database, ExportRecord, User
from mobile_multimodal.store.export_records import add_export
from mobile_multimodal.store.users import UserNotFoundError, erase_user, export_user


def _seed(db: Database) -> str:
    _, alice_key = create_key(db, "alice", "free", actor="cli:ops")
    create_key(db, "alice", "pro", actor="cli:ops")
    create_key(db, "bob", "free", actor="cli:ops")
    revoke_key(db, alice_key.id, actor="cli:ops")
    with db.session() as s:
        for user, ip in (("alice", "10.0.0.7"), ("bob", "10.0.0.8")):
            s.add(
                AuditEvent(
                    user_id=user,
                    action="auth.authenticate",
                    resource="/inference",
                    result="success",
                    source_ip=ip,
                    details={"key_id": "k"},
                )
            )
    add_export(
        db,
        platform="android",
        fmt="onnx",
        quantization="int2",
        requested_by=f"api:alice/{alice_key.id}",
        model="default",
        out_dir="x",
        status="queued",
    )
    add_export(
        db,
        platform="android",
        fmt="onnx",
        quantization="int2",
        requested_by="api:alice_x/k9",
        model="default",
        out_dir="y",
        status="queued",
    )  # another user whose id starts alike
    return alice_key.id


def test_the_first_key_creates_the_user_and_a_pro_key_upgrades_it(db: Database) -> None:
    create_key(db, "carol", "free")
    with db.session() as s:
        assert s.get(User, "carol").user_type == "free"  # type: ignore[union-attr]
    create_key(db, "carol", "pro")
    with db.session() as s:
        user = s.get(User, "carol")
        assert user is not None and user.user_type == "pro" and user.created_at <= datetime.now(UTC)


def test_export_holds_the_user_keys_audit_rows_and_exports(db: Database) -> None:
    key_id = _seed(db)
    data = export_user(db, "alice")
    assert data["user"]["user_type"] == "pro"
    assert len(data["api_keys"]) == 2 and all("hash" not in k for k in data["api_keys"])
    actions = sorted(e["action"] for e in data["audit_events"])
    assert actions == ["auth.authenticate", "key.create", "key.create", "key.revoke"]
    assert [e["source_ip"] for e in data["audit_events"] if e["action"] == "auth.authenticate"] == [
        "10.0.0.7"
    ]
    assert [r["requested_by"] for r in data["exports"]] == [f"api:alice/{key_id}"]
    with pytest.raises(UserNotFoundError):
        export_user(db, "nobody")


def test_erasure_deletes_keys_and_anonymises_the_trail(db: Database) -> None:
    _seed(db)
    report = erase_user(db, "alice")
    assert report.token.startswith("erased:") and "alice" not in report.token
    assert report.counts() == {"keys_deleted": 2, "audit_events_anonymised": 4, "exports_anonymised": 1}
    with db.session() as s:
        assert s.get(User, "alice") is None
        assert list(s.scalars(select(ApiKey.user_id))) == ["bob"]
        events = list(s.scalars(select(AuditEvent)))
        exports = sorted(s.scalars(select(ExportRecord.requested_by)))
    assert "alice" not in repr([(e.user_id, e.details, e.source_ip) for e in events])
    mine = [e for e in events if e.user_id == report.token]
    assert [(e.action, e.source_ip) for e in mine] == [("auth.authenticate", None)]  # their IP is gone
    assert sum(e.details.get("user") == report.token for e in events) == 3  # key.create x2, key.revoke
    assert [e.source_ip for e in events if e.user_id == "bob"] == ["10.0.0.8"]  # others untouched
    assert exports == ["api:alice_x/k9", f"api:{report.token}"]
    with pytest.raises(UserNotFoundError):
        erase_user(db, "alice")  # nothing names alice any more
