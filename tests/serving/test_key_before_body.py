"""A keyed route checks its key before it reads its body (serving/key_before_body.py), on a real
server: a bad key with a malformed body is a 401, not a 400; a keyless client is refused before
it sends the body it announced; an admin route does the same and audits its check once.

Before (issue 12) the body was read and parsed first: a bad key with malformed JSON got 400, and
a keyless client could make the server wait for (and buffer) its whole body.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mobile_multimodal.security import create_key
from mobile_multimodal.store import AuditEvent, Database

from .conftest import LiveServer, data_uri, make_settings, metric_value, tiny_model

BAD_KEY = {"X-API-Key": "mmk_" + "x" * 43}


def rows(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


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
