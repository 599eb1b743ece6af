"""POST /export and GET /export/{id} on the real app (uvicorn on 127.0.0.1), with real exports.

Jobs run the real pipeline in a child process (serving/export_worker.py) on a tiny saved model,
so a job's success, its failures (a model that does not load, a timeout) and its record are
those of a real export.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import AuditEvent, Database
from mobile_multimodal.store.export_records import list_exports

from .conftest import LiveServer, metric_value

UNAUTHORIZED = {"event_type": "unauthorized"}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(
        tmp_path_factory.mktemp("export-model") / "model"
    )


def _keys(server: LiveServer) -> tuple[str, str]:
    db: Database = server.app.state.database
    admin, _ = create_key(db, "ops", "pro", admin=True)  # pro: polling stays within its rate limit
    user, _ = create_key(db, "alice")
    return admin, user


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_finished(client: httpx.Client, export_id: str, headers: dict[str, str], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    body: Any = None
    while time.monotonic() < deadline:
        response = client.get(f"/export/{export_id}", headers=headers)
        if response.status_code == 429:
            time.sleep(float(response.headers["Retry-After"]))
            continue
        body = response.json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.5)
    raise TimeoutError(f"export {export_id} not finished in {timeout_s} s: {body}")


def test_unauthorised_calls_are_refused_audited_and_counted(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(auth="required")
    _, user_key = _keys(server)
    body = {"platform": "android", "quantization": "int2"}
    with server.client() as client:
        before = metric_value(client.get("/metrics").text, "security_events_total", **UNAUTHORIZED)
        calls = [
            (client.post("/export", json=body), 401, "MISSING_API_KEY"),
            (client.post("/export", json=body, headers=_bearer("mm_not-a-real-key")), 401, "INVALID_API_KEY"),
            (client.post("/export", json=body, headers=_bearer(user_key)), 403, "FORBIDDEN"),
            (client.get("/export/anything", headers=_bearer(user_key)), 403, "FORBIDDEN"),
        ]
        for response, status, code in calls:
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code
        after = metric_value(client.get("/metrics").text, "security_events_total", **UNAUTHORIZED)
    assert after - before == len(calls)
    db: Database = server.app.state.database
    with db.session() as s:
        refusals = s.scalars(select(AuditEvent).where(AuditEvent.result == "failure")).all()
    resources = [e.resource for e in refusals]
    assert resources.count("POST /export") == 3 and resources.count("GET /export/anything") == 1
    assert {e.user_id for e in refusals if e.action == "admin.access"} == {"alice"}
    assert list_exports(db) == []  # nothing was started


def test_bad_requests_are_refused_before_any_work(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(auth="required")
    admin_key, _ = _keys(server)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"platform": "windows"}, "VALIDATION_ERROR", "platform"),
        ({"platform": "android", "quantization": "int3"}, "VALIDATION_ERROR", "quantization"),
        ({"platform": "android", "format": "coreml"}, "UNSUPPORTED_PLATFORM_FORMAT", "ios"),
        ({"platform": "android", "out": "/etc"}, "VALIDATION_ERROR", "out"),  # no client-chosen path
        ({}, "VALIDATION_ERROR", "platform"),
    ]
    with server.client(headers=_bearer(admin_key)) as client:
        for body, code, mentioned in cases:
            response = client.post("/export", json=body)
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            assert error["code"] == code and mentioned in error["message"], (body, error)
        missing = client.get("/export/0123456789abcdef")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert list_exports(server.app.state.database) == []
    assert not (server.settings.exports_dir).exists() or not any(
        p for p in server.settings.exports_dir.iterdir() if p.name != ".lock"
    )


def test_one_export_at_a_time(live_server: Callable[..., LiveServer]) -> None:
    server = live_server()  # auth disabled: admin routes answer loopback clients
    lock_path = server.settings.exports_dir / ".lock"
    lock_path.parent.mkdir(parents=True)
    with lock_path.open("a+") as held:  # another worker's export holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        with server.client() as client:
            response = client.post("/export", json={"platform": "android"})
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "EXPORT_IN_PROGRESS"
    assert int(response.headers["Retry-After"]) > 0
    assert list_exports(server.app.state.database) == []


@pytest.mark.slow
def test_a_job_runs_a_real_export_and_reports_it(
    live_server: Callable[..., LiveServer], tiny_model_dir: Path
) -> None:
    server = live_server(auth="required", model=str(tiny_model_dir))
    admin_key, _ = _keys(server)
    with server.client(headers=_bearer(admin_key)) as client:
        started = client.post("/export", json={"platform": "android", "quantization": "fp32"})
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["status"] == "queued" and started.headers["Location"] == f"/export/{job['id']}"
        busy = client.post("/export", json={"platform": "ios", "format": "onnx"})
        assert busy.status_code == 409  # the first one holds the lock until its process ends
        done = _wait_finished(client, job["id"], {}, timeout_s=600)
        assert done["status"] == "succeeded", done["error"]
        listed = client.get("/export", params={"limit": 5}).json()["exports"]
    manifest = done["manifest"]
    assert (manifest["platform"], manifest["format"], manifest["quantization"]) == ("android", "onnx", "fp32")
    assert manifest["validation"]["executed"] is True
    bundle = server.settings.exports_dir / job["id"]
    assert (bundle / "manifest.json").is_file()  # under the data dir, named by the id
    assert done["size_bytes"] == sum(f["bytes"] for f in manifest["files"])
    assert done["requested_by"].startswith("api:ops/")
    assert [e["id"] for e in listed] == [job["id"]]


@pytest.mark.slow
def test_failed_and_timed_out_jobs_are_failed_with_their_reason(
    live_server: Callable[..., LiveServer], tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = live_server(model=str(tmp_path / "no-such-model"))
    with server.client() as client:
        job = client.post("/export", json={"platform": "android"}).json()
        done = _wait_finished(client, job["id"], {}, timeout_s=300)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "EXPORT_MODEL_INVALID"
    assert not (server.settings.exports_dir / job["id"]).exists()  # nothing half-written

    # An export cannot finish in half a second (the child alone imports torch): it is stopped.
    slow = live_server(model=str(tiny_model_dir), export_timeout_s=0.5, data_dir=tmp_path / "slow")
    with slow.client() as client:
        job = client.post("/export", json={"platform": "android"}).json()
        done = _wait_finished(client, job["id"], {}, timeout_s=120)
        assert done["status"] == "failed" and done["error"]["code"] == "EXPORT_TIMEOUT"
        jobs = slow.app.state.export_jobs
        assert jobs.wait(60)  # the child was stopped and the lock released
        assert not jobs.running()
    leftovers = [p.name for p in slow.settings.exports_dir.iterdir() if not p.name.startswith(".lock")]
    assert leftovers == [f"{job['id']}.log"]  # the child's output, kept for diagnosis; no bundle
