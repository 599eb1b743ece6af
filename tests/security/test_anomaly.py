"""Anomaly rules, alone and through the middleware on a real app."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select

from mobile_multimodal.security import AnomalyDetector, Principal, install_security, require_api_key
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import AuditEvent, Database


def anomalies() -> float:
    return REGISTRY.get_sample_value("security_events_total", {"event_type": "anomalous_request"}) or 0.0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_request_rules() -> None:
    d = AnomalyDetector(max_body_bytes=1000)
    assert d.inspect_request("1.1.1.1", "/inference", 1000) is None
    hit = d.inspect_request("1.1.1.1", "/inference", 1001)
    assert hit is not None and hit.rule == "oversized_body" and hit.source_ip == "1.1.1.1"
    for path in ("/static/../../etc/passwd", "/a/%2E%2E/b", "/x?file=..%2f..%2fetc", "/a%00b", "/a/.."):
        found = d.inspect_request("2.2.2.2", path, None)
        assert found is not None and found.rule == "path_traversal", path
    assert d.inspect_request("2.2.2.2", "/v1/chat/completions?x=a.b", None) is None


def test_error_burst_fires_once_per_window() -> None:
    clock = Clock()
    d = AnomalyDetector(max_body_bytes=1000, error_burst=5, window_s=10, clock=clock)
    hits = []
    for _ in range(4):
        clock.t += 1
        hits.append(d.observe_response("9.9.9.9", 401))
    assert hits == [None] * 4
    assert d.observe_response("9.9.9.9", 200) is None  # successes do not count
    clock.t += 1
    burst = d.observe_response("9.9.9.9", 404)
    assert burst is not None and burst.rule == "client_error_burst"
    assert all(d.observe_response("9.9.9.9", 401) is None for _ in range(20))  # quiet for a window
    assert d.observe_response("8.8.8.8", 401) is None  # other sources are counted separately


def test_slow_errors_are_not_a_burst() -> None:
    clock = Clock()
    d = AnomalyDetector(max_body_bytes=1000, error_burst=3, window_s=10, clock=clock)
    results = []
    for _ in range(10):
        clock.t += 6  # 3 errors always span 12 s > 10 s window
        results.append(d.observe_response("7.7.7.7", 400))
    assert results == [None] * 10


def make_app(db: Database) -> FastAPI:
    settings = Settings(auth="required", max_body_bytes=2048, anomaly_error_burst=5, anomaly_window_s=60)
    app = FastAPI()
    install_security(app, settings, db)

    @app.post("/inference")
    def infer(principal: Principal = Depends(require_api_key)) -> dict[str, str]:
        return {"ok": principal.user_id}

    return app


def anomaly_rows(db: Database) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "request.anomaly")))


def test_oversized_body_is_refused_before_reading(db: Database) -> None:
    client = TestClient(make_app(db), client=("192.0.2.50", 1))
    before = anomalies()
    r = client.post("/inference", content=b"x" * 5000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE" and "2048" in r.json()["error"]["message"]
    assert anomalies() == before + 1
    (row,) = anomaly_rows(db)
    assert (row.source_ip, row.details["rule"], row.resource) == (
        "192.0.2.50",
        "oversized_body",
        "POST /inference",
    )


def test_burst_of_bad_keys_is_one_anomaly(db: Database) -> None:
    client = TestClient(make_app(db), client=("192.0.2.60", 1))
    before = anomalies()
    codes = [client.post("/inference", headers={"X-API-Key": f"mmk_{i:043d}"}).status_code for i in range(12)]
    assert codes == [401] * 12
    assert anomalies() == before + 1  # 5 errors make the burst; the rest fall in its quiet window
    (row,) = anomaly_rows(db)
    assert row.details["rule"] == "client_error_burst" and row.source_ip == "192.0.2.60"


def test_path_probe_is_recorded(db: Database) -> None:
    client = TestClient(make_app(db))
    before = anomalies()
    assert client.get("/static/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert anomalies() == before + 1
    assert anomaly_rows(db)[0].details["rule"] == "path_traversal"
