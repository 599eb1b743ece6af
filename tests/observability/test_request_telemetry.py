from __future__ import annotations

import gzip
import json
from pathlib import Path

from fastapi.testclient import TestClient

from mobile_multimodal.observability.config import LoggingConfig, ObservabilityConfig
from mobile_multimodal.observability.logging import BASE_FIELDS, REQUEST_FIELDS
from mobile_multimodal.observability.tracing import force_flush
from mobile_multimodal.settings import Settings

from .app_under_test import build_app
from .conftest import sample

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


def _log_lines(settings: Settings) -> list[dict[str, object]]:
    path = settings.resolved_log_dir / "application.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _access(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in lines if line.get("operation") == "http_request"]


def test_request_span_continues_the_callers_w3c_trace(settings: Settings) -> None:
    app, _, exporter = build_app(settings)
    with TestClient(app) as client:
        response = client.post("/inference", headers={"traceparent": TRACEPARENT})
        force_flush()
    assert response.headers["x-trace-id"] == TRACE_ID
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /inference", "model_inference", "inference"}  # one server span, not two
    server = spans["POST /inference"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN
    assert spans["model_inference"].parent is not None
    assert spans["model_inference"].parent.span_id == server.context.span_id
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/inference"
    assert server.attributes["http.response.status_code"] == 200


def test_polled_routes_are_not_traced(settings: Settings) -> None:
    app, _, exporter = build_app(settings)
    with TestClient(app) as client:
        for path in ("/metrics", "/model/metrics", "/health"):
            response = client.get(path, headers={"traceparent": TRACEPARENT})
            assert response.status_code == 200
            assert "x-trace-id" not in response.headers
        force_flush()
    assert exporter.get_finished_spans() == ()


def test_counters_move_by_exactly_the_requests_sent(settings: Settings) -> None:
    ok = {"endpoint": "/inference", "method": "POST", "status": "200"}
    user = {"user_id": "alice", "endpoint": "/inference"}
    anon = {"user_id": "anonymous", "endpoint": "/inference"}
    timeouts = {"endpoint": "/slow-timeout", "method": "GET", "status": "504"}
    before = (
        sample("http_requests_total", ok),
        sample("api_requests_per_user_total", user),
        sample("api_requests_per_user_total", anon),
        sample("http_requests_total", timeouts),
        sample("http_request_duration_seconds_count", {"endpoint": "/inference", "method": "POST"}),
    )
    app, _, _ = build_app(settings)
    with TestClient(app) as client:
        for _ in range(7):
            client.post("/inference")
        for _ in range(3):
            client.post("/inference", params={"user": "alice"})
        for _ in range(2):
            client.get("/slow-timeout")
        client.get("/metrics")  # scrapes are not API usage
    after = (
        sample("http_requests_total", ok),
        sample("api_requests_per_user_total", user),
        sample("api_requests_per_user_total", anon),
        sample("http_requests_total", timeouts),
        sample("http_request_duration_seconds_count", {"endpoint": "/inference", "method": "POST"}),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [10, 3, 7, 2, 10]


def test_error_rate_window_and_error_types(settings: Settings) -> None:
    app, obs, _ = build_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(3):
            client.get("/slow-timeout")
        assert client.get("/boom").status_code == 500
        client.get("/no-such-route")
        client.get("/metrics")  # refreshes the window
    window = obs.config.metrics.error_rate_window_s
    assert (
        sample("error_rate_by_endpoint", {"endpoint": "/slow-timeout", "error_type": "timeout"}) == 3 / window
    )
    assert sample("error_rate_by_endpoint", {"endpoint": "/boom", "error_type": "server_error"}) >= 1 / window
    # Unknown paths share one label value: a scanner cannot blow up the series count.
    assert (
        sample("error_rate_by_endpoint", {"endpoint": "unmatched", "error_type": "not_found"}) >= 1 / window
    )


def test_one_json_access_line_per_request_with_every_field(settings: Settings) -> None:
    # a busy machine's first request can pass the default 100 ms slow-request mark (a WARNING):
    # the levels here are the status's, so no request may count as slow
    app, _, _ = build_app(settings, ObservabilityConfig(logging=LoggingConfig(slow_request_ms=3_600_000)))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.post("/inference", params={"task": "ocr"}, headers={"traceparent": TRACEPARENT})
        client.get("/slow-timeout")
        client.get("/boom")
        client.get("/health")  # DEBUG: not at the default INFO
    lines = _log_lines(settings)
    for line in lines:
        for field in BASE_FIELDS:
            assert field in line, (field, line)
    access = _access(lines)
    assert [(a["path"], a["status"], a["level"]) for a in access] == [
        ("/inference", 200, "INFO"),
        ("/slow-timeout", 504, "ERROR"),
        ("/boom", 500, "ERROR"),
    ]
    first = access[0]
    for field in REQUEST_FIELDS:
        assert field in first, field
    assert first["trace_id"] == TRACE_ID
    assert first["task"] == "ocr" and first["batch_size"] == 2 and first["model_type"] == "multimodal"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] > 0
    assert isinstance(first["memory_mb"], float) and first["memory_mb"] > 10
    assert access[1]["error_type"] == "timeout"


def test_success_lines_are_sampled_but_errors_never_are(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_dir=tmp_path / "logs")
    config = ObservabilityConfig(logging=LoggingConfig(request_sample_ratio=0.0))
    app, _, _ = build_app(settings, config)
    with TestClient(app) as client:
        for _ in range(5):
            client.post("/inference")
        client.get("/slow-timeout")
    assert [a["status"] for a in _access(_log_lines(settings))] == [504]


def test_responses_are_gzipped_when_the_client_accepts_it(settings: Settings) -> None:
    app, _, _ = build_app(settings)
    with TestClient(app) as client:
        plain = client.post("/inference", headers={"Accept-Encoding": "identity"})
        packed = client.post("/inference", headers={"Accept-Encoding": "gzip"})
        # httpx decodes transparently; read the raw bytes to see what went over the wire
        raw = client.build_request("POST", "/inference", headers={"Accept-Encoding": "gzip"})
        wire = client.send(raw, stream=True)
        body = b"".join(wire.iter_raw())
        wire.close()
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert len(body) < len(plain.content) / 5
    assert json.loads(gzip.decompress(body)) == plain.json()


def test_telemetry_off_means_no_middleware(settings: Settings) -> None:
    labels = {"endpoint": "/inference", "method": "POST", "status": "200"}
    before = sample("http_requests_total", labels)
    app, _, exporter = build_app(settings, ObservabilityConfig(enabled=False))
    with TestClient(app) as client:
        response = client.post("/inference", headers={"traceparent": TRACEPARENT})
        assert client.get("/metrics").status_code == 200  # exposition stays
        force_flush()
    assert "x-trace-id" not in response.headers
    assert sample("http_requests_total", labels) == before
    assert exporter.get_finished_spans() == ()


def test_a_malformed_traceparent_starts_a_new_trace(settings: Settings) -> None:
    app, _, exporter = build_app(settings)
    with TestClient(app) as client:
        response = client.post("/inference", headers={"traceparent": "00-not-a-trace-01"})
        force_flush()
    assert response.status_code == 200
    (server,) = [s for s in exporter.get_finished_spans() if s.name == "POST /inference"]
    assert server.parent is None
    assert response.headers["x-trace-id"] == format(server.context.trace_id, "032x") != "0" * 32


def test_without_propagation_headers_the_request_starts_its_own_trace(settings: Settings) -> None:
    app, _, exporter = build_app(settings)
    with TestClient(app) as client:
        plain = client.post("/inference")
        # any header the propagators read still counts: a tracestate alone is no parent, but is
        # handed to the propagator (which ignores it), and baggage alone starts a new trace too
        stated = client.post("/inference", headers={"tracestate": "vendor=value", "baggage": "k=v"})
        child = client.post("/inference", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=value"})
        force_flush()
    servers = {s.context.trace_id: s for s in exporter.get_finished_spans() if s.name == "POST /inference"}
    for response in (plain, stated):
        server = servers[int(response.headers["x-trace-id"], 16)]
        assert server.parent is None
    continued = servers[int(TRACE_ID, 16)]
    assert continued.parent is not None and continued.context.trace_state.get("vendor") == "value"
    assert child.headers["x-trace-id"] == TRACE_ID


def test_an_invented_method_shares_one_label_value(settings: Settings) -> None:
    labels = {"endpoint": "unmatched", "method": "other", "status": "404"}
    before = sample("http_requests_total", labels)
    app, _, _ = build_app(settings)
    with TestClient(app) as client:
        for method in ("FROB", "XYZZY", "PLUGH"):
            assert client.request(method, "/nowhere").status_code in (404, 405)
    assert sample("http_requests_total", labels) == before + 3
    assert sample("http_requests_total", {"endpoint": "unmatched", "method": "FROB", "status": "404"}) == 0
