"""Attacks on authentication that once worked, kept here so they stay fixed (issue 12).

* A bad-key flood wrote one audit row and one log line per request (200 requests, 200 rows):
  now the first ``MOBILE_MM_AUTH_FAILURE_AUDIT_LIMIT`` per source and window are audited one by
  one and the rest summarised in one row, while the metrics still count every failure.
* The body was read and parsed before the key was checked: a bad key with malformed JSON got
  400, and a keyless client could make the server wait for (and buffer) its whole body. Now the
  key is checked first: 401 at once, before a byte of the body is read.
* The audited source IP came from ``X-Forwarded-For`` unchecked: it is an IP or ``"invalid"``
  (the proxy-trust half is tested on a real server process in tests/serving/test_hardening_limits.py).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select
from tests.serving.conftest import LiveServer, data_uri, make_settings, metric_value, tiny_model

from mobile_multimodal.security import (
    FailureAuditThrottle,
    Principal,
    client_ip,
    create_key,
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


def test_a_window_closes_into_one_summary() -> None:
    now = [0.0]
    throttle = FailureAuditThrottle(limit=2, window_s=60, clock=lambda: now[0])
    admitted = [throttle.admit("192.0.2.1", "invalid", "POST /inference")[0] for _ in range(5)]
    assert admitted == [True, True, False, False, False]
    assert throttle.closed_windows() == []  # still open
    now[0] = 61.0
    admit, closed = throttle.admit("192.0.2.1", "missing", "POST /inference")
    assert admit is True  # a new window
    assert closed is not None and closed.count == 3 and closed.reasons == {"invalid": 3}
    now[0] = 200.0
    assert throttle.closed_windows() == []  # the new window suppressed nothing


def test_the_throttle_stays_bounded_under_many_sources() -> None:
    throttle = FailureAuditThrottle(limit=1, window_s=60, max_sources=4, clock=lambda: 0.0)
    admitted = [throttle.admit(f"2001:db8::{i:x}", "invalid", "r")[0] for i in range(100)]
    # four sources tracked, the other 96 share one entry with one audited failure
    assert sum(admitted) == 5
    summaries = throttle.closed_windows(final=True)
    assert sum(s.count for s in summaries) == 95


# --- the audited source address --------------------------------------------------------------
@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (("203.0.113.9", 1), "203.0.113.9"),
        (("::ffff:10.0.0.7", 1), "10.0.0.7"),
        (("2001:DB8::1", 1), "2001:db8::1"),
        (("<script>alert(1)</script>", 0), "invalid"),
        (("10.0.0.1, 10.0.0.2", 0), "invalid"),
        (("testclient", 0), "invalid"),
        (None, "unknown"),
    ],
)
def test_the_source_ip_is_an_ip_or_a_marker(client: tuple[str, int] | None, expected: str) -> None:
    assert client_ip({"client": client}) == expected


def test_a_script_as_client_address_is_audited_as_invalid(db: Database) -> None:
    client = TestClient(make_app(db), client=("<script>alert(1)</script>", 0))
    assert client.get("/whoami", headers=BAD_KEY).status_code == 401
    (row,) = rows(db, "auth.authenticate")
    assert row.source_ip == "invalid"


# --- the key before the body -----------------------------------------------------------------
@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    server = LiveServer(make_settings(tmp_path, auth="required"), tiny_model).start()
    try:
        server.wait_ready()
        key, _ = create_key(server.app.state.database, "carol", "pro")
        yield server, key
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/inference", "/model/inference", "/v1/chat/completions"])
def test_a_bad_key_with_a_malformed_body_is_401(keyed_server: tuple[LiveServer, str], path: str) -> None:
    server, key = keyed_server
    malformed = b'{"image": "abc", "task": '
    json_type = {"Content-Type": "application/json"}
    with server.client() as http:
        before = metric_value(http.get("/metrics").text, "http_requests_total", endpoint=path, status="401")
        for headers, code in ((BAD_KEY, "INVALID_API_KEY"), ({}, "MISSING_API_KEY")):
            response = http.post(path, content=malformed, headers={**json_type, **headers})
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == code
        after = metric_value(http.get("/metrics").text, "http_requests_total", endpoint=path, status="401")
        # with the key, the body is judged as before
        good = http.post(path, content=malformed, headers={**json_type, "X-API-Key": key})
    assert after == before + 2  # counted under the route, not as an unmatched path
    assert good.status_code == 400 and good.json()["error"]["code"] == "INVALID_JSON"


def test_a_keyless_client_is_refused_before_it_sends_its_body(keyed_server: tuple[LiveServer, str]) -> None:
    server, _ = keyed_server
    head = (
        b"POST /inference HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 9000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)  # and none of the 9 MB it announced
        answer = sock.recv(65536)  # before the fix: no answer until the body came (timeout)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"MISSING_API_KEY" in answer


def test_a_valid_key_still_works_end_to_end(keyed_server: tuple[LiveServer, str]) -> None:
    server, key = keyed_server
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": key}) as http:
        response = http.post("/inference", json={"image": data_uri(), "task": "ocr"})
        models = http.get("/v1/models")
    assert response.status_code == 200, response.text
    assert models.status_code == 200


def test_an_admin_route_checks_its_key_before_the_body_too(keyed_server: tuple[LiveServer, str]) -> None:
    server, pro_key = keyed_server
    database = server.app.state.database
    admin_key, _ = create_key(database, "root", admin=True)
    malformed = b'{"platform": '
    json_type = {"Content-Type": "application/json"}
    with server.client() as http:
        keyless = http.post("/export", content=malformed, headers=json_type)
        not_admin = http.post("/export", content=malformed, headers={**json_type, "X-API-Key": pro_key})
        admin = http.post("/export", content=malformed, headers={**json_type, "X-API-Key": admin_key})
    assert (keyless.status_code, keyless.json()["error"]["code"]) == (401, "MISSING_API_KEY")
    assert (not_admin.status_code, not_admin.json()["error"]["code"]) == (403, "FORBIDDEN")
    assert (admin.status_code, admin.json()["error"]["code"]) == (400, "INVALID_JSON")
    # the admin check ran before the body and again as the route's dependency: one audit row
    granted = [row for row in rows(database, "admin.access") if row.result == "success"]
    assert [row.user_id for row in granted] == ["root"]
