"""Readiness transitions: 503 while loading, 200 once loaded and warmed up, 503 for good on a failed load."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mobile_multimodal.serving.engine import default_loader
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, data_uri, metric_value, tiny_model


@pytest.mark.slow
def test_ready_only_after_load_and_warm_up(live_server: Callable[..., LiveServer]) -> None:
    release = threading.Event()

    def gated_loader(settings: Settings) -> object:
        # The real tiny model, held back until the test has seen the loading state.
        release.wait(120)  # (the test releases it; the bound only matters when it fails first)
        return tiny_model(settings)

    server = live_server(loader=gated_loader, ready=False)
    with server.client() as client, contextlib.ExitStack() as releasing:
        releasing.callback(release.set)  # also when an assertion fails: the server must stop
        assert client.get("/alive").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "not_ready",
            "model_loaded": False,
            "warmed_up": False,
            "reason": "model state: loading",
        }
        early = client.post("/inference", json={"image": data_uri(), "task": "ocr"})
        assert early.status_code == 503 and early.json()["error"]["code"] == "MODEL_NOT_READY"
        assert int(early.headers["retry-after"]) > 0
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["checks"]["model"] == "unhealthy"
        assert health.json()["errors"][0]["code"] == "MODEL_LOADING"
        release.set()
        server.wait_ready()
        assert client.get("/health").status_code == 200
        assert client.post("/inference", json={"image": data_uri(), "task": "ocr"}).status_code == 200


def test_failed_load_stays_unready_and_is_reported(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    server = live_server(loader=default_loader, ready=False, model=str(missing))
    with server.client() as client:
        deadline = time.monotonic() + 60  # the load fails at once; the bound only matters if it never does
        while server.app.state.engine.state != "failed":
            assert time.monotonic() < deadline, f"the load never failed: {server.app.state.engine.state}"
            time.sleep(0.02)
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert "MODEL_NOT_FOUND" in ready.json()["reason"]
        health = client.get("/health")
        body = health.json()
        assert health.status_code == 503 and body["status"] == "unhealthy"
        assert body["checks"] == {
            "database": "healthy",
            "model": "unhealthy",
            "memory": "healthy",
            "disk": "healthy",
        }
        assert body["errors"][0]["component"] == "model" and body["errors"][0]["code"] == "MODEL_LOAD_FAILED"
        assert body["errors"][0]["message"].startswith("Model failed to load")
        metrics_text = client.get("/metrics").text
        assert metric_value(metrics_text, "model_load_failures_total", reason="MODEL_NOT_FOUND") >= 1
        refused = client.post("/inference", json={"image": data_uri(), "task": "ocr"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "MODEL_NOT_READY"
        probe = client.get("/model/health")
        assert probe.status_code == 503 and probe.json()["error"]["code"] == "MODEL_NOT_READY"
        assert client.get("/alive").status_code == 200


def test_health_reports_an_unreachable_database(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database directory should be")
    server = live_server(database_url=f"sqlite:///{blocker}/sub/db.sqlite")
    with server.client() as client:
        health = client.get("/health")
        body = health.json()
        assert health.status_code == 503 and body["checks"]["database"] == "unhealthy"
        assert body["errors"][0]["code"] == "DATABASE_UNAVAILABLE"
        # The model is fine, so inference still works with auth disabled.
        assert client.post("/inference", json={"image": data_uri(), "task": "ocr"}).status_code == 200
