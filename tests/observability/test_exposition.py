from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from mobile_multimodal.observability.exposition import MetricsExposition, scrape_registry
from mobile_multimodal.settings import Settings

from .app_under_test import build_app
from .conftest import sample

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_plain_text_by_default_and_openmetrics_with_exemplars_on_request(settings: Settings) -> None:
    app, _, _ = build_app(settings)
    with TestClient(app) as client:
        client.post("/inference", headers={"traceparent": TRACEPARENT})
        plain = client.get("/metrics")
        om = client.get("/model/metrics", headers={"Accept": OPENMETRICS})
    assert plain.headers["content-type"].startswith("text/plain")
    assert "# {trace_id=" not in plain.text  # the 0.0.4 text format has no exemplars
    names = {f.name for f in text_families(plain.text)}
    assert {"http_requests", "model_inference_duration_seconds", "process_resident_memory_bytes"} <= names
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    exemplars = [
        s.exemplar
        for family in text_string_to_metric_families(om.text)
        if family.name == "http_request_duration_seconds"
        for s in family.samples
        if s.exemplar is not None and s.labels.get("endpoint") == "/inference"
    ]
    assert exemplars, "the latency histogram carries exemplars in OpenMetrics"
    # the bucket our request landed in links to its trace (other buckets keep earlier tests' ones)
    assert {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"} in [e.labels for e in exemplars]


def test_bearer_token_guards_metrics(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_dir=tmp_path / "logs", metrics_token="s3cret-token")
    missing = sample("auth_failures_total", {"reason": "missing_metrics_token"})
    invalid = sample("auth_failures_total", {"reason": "invalid_metrics_token"})
    app, _, _ = build_app(settings)
    with TestClient(app) as client:
        none = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer guess"})
        right = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        alias = client.get("/model/metrics", headers={"Authorization": "bearer s3cret-token"})
    assert none.status_code == wrong.status_code == 401
    assert none.headers["www-authenticate"].startswith("Bearer")
    assert none.json()["error"]["code"] == "UNAUTHORIZED"
    assert right.status_code == alias.status_code == 200
    assert sample("auth_failures_total", {"reason": "missing_metrics_token"}) == missing + 1
    assert sample("auth_failures_total", {"reason": "invalid_metrics_token"}) == invalid + 1


def test_no_token_configured_means_open() -> None:
    assert MetricsExposition(token=None).authorized(None) is None


_WORKER = """
from mobile_multimodal.observability import metrics
metrics.HTTP_REQUESTS.labels("/inference", "POST", "200").inc({n})
metrics.QUEUE_DEPTH.labels("captioning").set({n})
for _ in range({n}):  # n observations of 0.02 s (le 0.03) and one of 3 s (le 5.0)
    metrics.INFERENCE_DURATION.labels("mm", "ocr", "int2").observe(0.02)
metrics.INFERENCE_DURATION.labels("mm", "ocr", "int2").observe(3.0)
metrics.MODEL_INFO.labels("mm", "0.1.0", "int2", "1000", "4000", "ab12", "pytorch").set(1)
"""


def test_multiprocess_workers_are_aggregated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (3, 4):  # two "workers", each its own process writing its own files
        subprocess.run([sys.executable, "-c", _WORKER.format(n=n)], env=env, check=True, timeout=600)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    registry = scrape_registry()
    labels = {"endpoint": "/inference", "method": "POST", "status": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 7
    # the workers exited without mark_process_dead, so their live gauges still count: 3 + 4
    assert registry.get_sample_value("inference_queue_depth", {"task": "captioning"}) == 7
    # a histogram's buckets, count and sum add up over the workers: 7 + 2 observations
    hist = {"model_type": "mm", "task": "ocr", "quantization": "int2"}
    duration = "model_inference_duration_seconds"
    assert registry.get_sample_value(f"{duration}_count", hist) == 9
    assert registry.get_sample_value(f"{duration}_sum", hist) == pytest.approx(7 * 0.02 + 2 * 3.0)
    assert registry.get_sample_value(f"{duration}_bucket", {**hist, "le": "0.03"}) == 7
    assert registry.get_sample_value(f"{duration}_bucket", {**hist, "le": "2.5"}) == 7
    assert registry.get_sample_value(f"{duration}_bucket", {**hist, "le": "+Inf"}) == 9
    # model_info survives multiprocess mode (an Info metric would silently vanish there)
    info = {"name": "mm", "version": "0.1.0", "quantization": "int2", "parameters": "1000"}
    info |= {"size_bytes": "4000", "weights_sha256": "ab12", "runtime": "pytorch"}
    assert registry.get_sample_value("model_info", info) == 1
