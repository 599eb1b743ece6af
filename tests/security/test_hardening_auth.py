"""Attacks on authentication that once worked, kept here so they stay fixed (issue 12).

* A bad-key flood wrote one audit row and one log line per request (200 requests, 200 rows):
  now the first ``MOBILE_MM_AUTH_FAILURE_AUDIT_LIMIT`` per source and window are audited one by
  one and the rest summarised in one row, while the metrics still count every failure.
* The body was read and parsed before the key was checked (tests/serving/test_key_before_body.py).
* The audited source IP came from ``X-Forwarded-For`` unchecked: it is an IP or ``"invalid"``
  (test_client_address.py; the proxy-trust half is tested on a real server process in
  tests/serving/test_hardening_limits.py).
"""

from __future__ import annotations

import logging

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from mobile_multimodal.security import (
    Principal,
    install_security,
    require_api_key,
)
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import AuditEvent, Database

BAD_KEY = {"X-API-Key": "mmk_" + "x" * 43}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rows(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def make_app(db: Database, **overrides: object) -> FastAPI:
    app = FastAPI()
    install_security(app, Settings(auth="required", **overrides), db)  # type: ignore[arg-type]

    @app.get("/whoami")
    def whoami(principal: Principal = Depends(require_api_key)) -> dict[str, str]:
        return {"user_id": principal.user_id}

    return app


# --- failed-auth audit throttle ------------------------------------------------------------
def test_a_bad_key_flood_is_a_few_audit_rows_and_every_failure_is_counted(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(db, auth_failure_audit_limit=10, auth_failure_audit_window_s=3600)
    client = TestClient(app, client=("203.0.113.9", 4000))
    failures = value("auth_failures_total", reason="invalid")
    events = value("security_events_total", event_type="authentication_failure")
    with caplog.at_level(logging.INFO, logger="mobile_multimodal.audit"):
        statuses = {client.get("/whoami", headers=BAD_KEY).status_code for _ in range(200)}
    assert statuses == {401}
    assert value("auth_failures_total", reason="invalid") == failures + 200
    assert value("security_events_total", event_type="authentication_failure") == events + 200
    assert len(rows(db, "auth.authenticate")) == 10
    logged = [r for r in caplog.records if getattr(r, "action", None) == "auth.authenticate"]
    assert len(logged) == 10

    # The 190 held back become one summary row (here at shutdown; the server also sweeps).
    assert app.state.security.flush_suppressed_audits(final=True) == 1
    (summary,) = rows(db, "auth.authenticate.suppressed")
    assert (summary.source_ip, summary.result, summary.resource) == ("203.0.113.9", "failure", "GET /whoami")
    assert summary.details["suppressed"] == 190
    assert summary.details["reasons"] == {"invalid": 190}
    assert summary.details["first_at"] <= summary.details["last_at"]
    assert app.state.security.flush_suppressed_audits(final=True) == 0  # written once


def test_each_source_has_its_own_allowance(db: Database) -> None:
    app = make_app(db, auth_failure_audit_limit=3, auth_failure_audit_window_s=3600)
    for ip in ("198.51.100.1", "198.51.100.2"):
        client = TestClient(app, client=(ip, 4000))
        for _ in range(5):
            assert client.get("/whoami").status_code == 401
    audited = [r.source_ip for r in rows(db, "auth.authenticate")]
    assert audited == ["198.51.100.1"] * 3 + ["198.51.100.2"] * 3


# --- the audited source address --------------------------------------------------------------
def test_a_script_as_client_address_is_audited_as_invalid(db: Database) -> None:
    client = TestClient(make_app(db), client=("<script>alert(1)</script>", 0))
    assert client.get("/whoami", headers=BAD_KEY).status_code == 401
    (row,) = rows(db, "auth.authenticate")
    assert row.source_ip == "invalid"
