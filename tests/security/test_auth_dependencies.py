"""The auth dependencies (security/auth_dependencies.py) on a real FastAPI app: codes, error
bodies, metrics, audit rows, limits, the database down, and the key check off the event loop."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from mobile_multimodal.security import (
    ANONYMOUS,
    Principal,
    checks_key_before_body,
    create_key,
    install_security,
    require_admin,
    require_api_key,
    revoke_key,
)
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import ApiKey, AuditEvent, Database


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_app(db: Database, **overrides: object) -> FastAPI:
    settings = Settings(auth="required", **overrides)  # type: ignore[arg-type]
    app = FastAPI()
    install_security(app, settings, db)

    @app.get("/whoami")
    def whoami(principal: Principal = Depends(require_api_key)) -> dict[str, object]:
        return {"user_id": principal.user_id, "user_type": principal.user_type, "key_id": principal.key_id}

    @app.post("/admin/reload")
    def reload(request: Request, principal: Principal = Depends(require_admin)) -> dict[str, object]:
        assert request.state.principal == principal
        return {"admin": principal.user_id}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def audit_rows(db: Database) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_valid_key_both_headers(db: Database) -> None:
    key, record = create_key(db, "alice", "pro")
    client = TestClient(make_app(db))
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key},
        {"authorization": f"bearer {key}"},
    ):
        r = client.get("/whoami", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"user_id": "alice", "user_type": "pro", "key_id": record.id}
    with db.session() as s:
        assert s.get(ApiKey, record.id).last_used_at is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "code", "reason"),
    [
        ({}, "MISSING_API_KEY", "missing"),
        ({"X-API-Key": "mmk_" + "x" * 43}, "INVALID_API_KEY", "invalid"),
        ({"Authorization": "Bearer garbage"}, "INVALID_API_KEY", "invalid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "INVALID_API_KEY", "invalid"),
    ],
)
def test_auth_failures(db: Database, headers: dict[str, str], code: str, reason: str) -> None:
    client = TestClient(make_app(db), client=("203.0.113.9", 4000))
    failures = value("auth_failures_total", reason=reason)
    events = value("security_events_total", event_type="authentication_failure")
    unauthorized = value("security_events_total", event_type="unauthorized")

    r = client.get("/whoami", headers=headers)

    assert r.status_code == 401
    body = r.json()
    assert set(body) == {"error", "trace_id"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert len(body["trace_id"]) == 32
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert value("auth_failures_total", reason=reason) == failures + 1
    assert value("security_events_total", event_type="authentication_failure") == events + 1
    assert value("security_events_total", event_type="unauthorized") == unauthorized  # not an admin route
    (row,) = audit_rows(db)
    assert (row.action, row.result, row.source_ip, row.user_id) == (
        "auth.authenticate",
        "failure",
        "203.0.113.9",
        "anonymous",
    )
    assert row.resource == "GET /whoami" and row.details["code"] == code


def test_revoked_key(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    key, record = create_key(db, "bob")
    client = TestClient(make_app(db), client=("198.51.100.4", 4000))
    assert client.get("/whoami", headers={"X-API-Key": key}).status_code == 200
    revoke_key(db, record.id)
    before = value("auth_failures_total", reason="revoked")
    with caplog.at_level(logging.INFO, logger="mobile_multimodal.audit"):
        r = client.get("/whoami", headers={"X-API-Key": key})
    assert r.status_code == 401 and r.json()["error"]["code"] == "REVOKED_API_KEY"
    assert value("auth_failures_total", reason="revoked") == before + 1
    row = audit_rows(db)[-1]
    assert (row.user_id, row.details["key_id"], row.source_ip) == ("bob", record.id, "198.51.100.4")
    # the same event on the audit logger, with the guide's fields
    (log,) = [r for r in caplog.records if getattr(r, "action", None) == "auth.authenticate"]
    assert (log.user_id, log.result, log.source_ip, log.resource) == (  # type: ignore[attr-defined]
        "bob",
        "failure",
        "198.51.100.4",
        "GET /whoami",
    )
    assert log.audit_timestamp and log.details["code"] == "REVOKED_API_KEY"  # type: ignore[attr-defined]


def test_auth_disabled_is_anonymous(db: Database) -> None:
    app = make_app(db)
    app.state.security.settings = Settings(auth="disabled")
    client = TestClient(app)
    r = client.get("/whoami")
    assert r.json() == {"user_id": "anonymous", "user_type": "free", "key_id": None}
    assert ANONYMOUS.user_id == "anonymous"
    assert audit_rows(db) == []


def test_routes_without_the_dependency_need_no_key(db: Database) -> None:
    assert TestClient(make_app(db)).get("/health").status_code == 200


def test_rate_limit_per_key(db: Database) -> None:
    free_key, _ = create_key(db, "free-user", "free")
    pro_key, _ = create_key(db, "pro-user", "pro")
    client = TestClient(
        make_app(
            db,
            rate_limit_free_burst=3,
            # one token per 1000 s: no refill while the test runs, however slow the machine
            rate_limit_free_per_minute=0.06,
            rate_limit_pro_burst=10,
            rate_limit_pro_per_minute=600,
        )
    )
    limited = value("security_events_total", event_type="rate_limited")
    codes = [client.get("/whoami", headers={"X-API-Key": free_key}).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    r = client.get("/whoami", headers={"X-API-Key": free_key})
    assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMITED"
    assert 940 <= int(r.headers["Retry-After"]) <= 1000  # the next token, 1000 s after the burst began
    assert value("security_events_total", event_type="rate_limited") == limited + 1
    # another key (the pro tier) is unaffected by the free key's empty bucket
    pro_codes = [client.get("/whoami", headers={"X-API-Key": pro_key}).status_code for _ in range(10)]
    assert pro_codes == [200] * 10
    rows = [r for r in audit_rows(db) if r.action == "rate_limit"]
    assert len(rows) == 1 and rows[0].user_id == "free-user" and rows[0].details["tier"] == "free"


def test_admin_routes(db: Database) -> None:
    admin_key, _ = create_key(db, "root", "pro", admin=True)
    user_key, user_rec = create_key(db, "alice", "free")
    client = TestClient(make_app(db), client=("198.51.100.4", 1234))
    unauthorized = value("security_events_total", event_type="unauthorized")

    ok = client.post("/admin/reload", headers={"X-API-Key": admin_key})
    assert ok.status_code == 200 and ok.json() == {"admin": "root"}

    forbidden = client.post("/admin/reload", headers={"X-API-Key": user_key})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "FORBIDDEN"
    assert value("security_events_total", event_type="unauthorized") == unauthorized + 1

    missing = client.post("/admin/reload")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "MISSING_API_KEY"
    assert value("security_events_total", event_type="unauthorized") == unauthorized + 2

    admin_rows = [(r.user_id, r.result) for r in audit_rows(db) if r.action == "admin.access"]
    assert admin_rows == [("root", "success"), ("alice", "failure")]
    assert [r.source_ip for r in audit_rows(db) if r.action == "admin.access"] == ["198.51.100.4"] * 2
    assert user_rec.is_admin is False


def test_admin_routes_with_auth_disabled_are_loopback_only(db: Database) -> None:
    app = make_app(db)
    app.state.security.settings = Settings(auth="disabled")
    before = value("security_events_total", event_type="unauthorized")
    remote = TestClient(app, client=("192.0.2.1", 5555)).post("/admin/reload")
    assert remote.status_code == 403 and remote.json()["error"]["code"] == "FORBIDDEN"
    assert value("security_events_total", event_type="unauthorized") == before + 1
    local = TestClient(app, client=("127.0.0.1", 5555)).post("/admin/reload")
    assert local.status_code == 200 and local.json() == {"admin": "anonymous"}


def test_dependency_without_install_is_a_clear_error() -> None:
    app = FastAPI()

    @app.get("/x")
    def x(principal: Principal = Depends(require_api_key)) -> str:
        return principal.user_id

    with pytest.raises(RuntimeError, match="install_security"):
        TestClient(app).get("/x")


def test_shape_is_the_same_with_serving_error_handlers(db: Database) -> None:
    errors = pytest.importorskip("mobile_multimodal.serving.error_handlers")
    app = make_app(db)
    errors.install_error_handlers(app)
    r = TestClient(app).get("/whoami", headers={"X-API-Key": "mmk_" + "y" * 43})
    assert r.status_code == 401
    assert r.json()["error"] == {"code": "INVALID_API_KEY", "message": "the API key is not valid"}
    assert set(r.json()) == {"error", "trace_id"}


def test_the_key_check_runs_off_the_event_loop(db: Database) -> None:
    key, _ = create_key(db, "dora", "pro")
    app = make_app(db)
    context = app.state.security
    checked_in: list[int] = []
    authenticate = context.authenticate

    def spy(*args: object, **kwargs: object) -> Principal:
        checked_in.append(threading.get_ident())
        return authenticate(*args, **kwargs)  # type: ignore[no-any-return]

    context.authenticate = spy

    @app.get("/loop")
    async def loop(principal: Principal = Depends(require_api_key)) -> dict[str, int]:
        return {"loop_thread": threading.get_ident()}

    r = TestClient(app).get("/loop", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    assert len(checked_in) == 1 and checked_in[0] != r.json()["loop_thread"]


def test_a_database_that_stops_answering_is_a_503_then_works_again(tmp_path: Path) -> None:
    home = tmp_path / "db"
    home.mkdir()
    db = Database(f"sqlite:///{home / 'mm.db'}")
    try:
        key, _ = create_key(db, "erin", "pro")
        admin_key, _ = create_key(db, "root", admin=True)
        client = TestClient(make_app(db))
        assert client.get("/whoami", headers={"X-API-Key": key}).status_code == 200
        saved = tmp_path / "saved"
        db.engine.dispose()
        shutil.move(home, saved)  # the file's directory is gone: no connection can open it
        for response in (
            client.get("/whoami", headers={"X-API-Key": key}),
            client.post("/admin/reload", headers={"X-API-Key": admin_key}),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
            assert int(response.headers["Retry-After"]) > 0
        shutil.move(saved, home)
        assert client.get("/whoami", headers={"X-API-Key": key}).status_code == 200
    finally:
        db.dispose()


@pytest.mark.parametrize("auth", ["required", "disabled"])
def test_without_a_database_keys_are_refused_or_not_needed(auth: str) -> None:
    app = FastAPI()
    assert install_security(app, Settings(auth=auth), None) is None  # type: ignore[arg-type]

    @app.get("/whoami")
    async def whoami(principal: Principal = Depends(require_api_key)) -> dict[str, object]:
        return {"user_id": principal.user_id}

    @app.get("/admin")
    async def admin(principal: Principal = Depends(require_admin)) -> dict[str, object]:
        return {"admin": principal.user_id}

    client = TestClient(app)
    keyed = client.get("/whoami", headers={"X-API-Key": "mmk_" + "z" * 43})
    if auth == "disabled":
        assert keyed.status_code == 200 and keyed.json() == {"user_id": "anonymous"}
    else:
        assert keyed.status_code == 503 and keyed.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert "Retry-After" in keyed.headers
    refused = client.get("/admin")  # admin rights are checked against the database, whatever the mode
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "DATABASE_UNAVAILABLE"


def test_only_an_async_check_can_run_before_the_body() -> None:
    def sync_check(request: Request) -> Principal:
        return ANONYMOUS

    with pytest.raises(TypeError, match="must be an async function"):
        checks_key_before_body(sync_check)
    assert getattr(require_api_key, "__checks_key_before_body__", False)
    assert getattr(require_admin, "__checks_key_before_body__", False)
