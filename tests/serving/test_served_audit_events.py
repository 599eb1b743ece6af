"""Audit events the running service writes for ``POST /export`` jobs: ``export.request`` when a
job is accepted (who, from where, what) and ``export.finish`` when it ends (its outcome), each
with every guide field, in the database and in ``audit.jsonl``. The job is a real one: a child
process exporting a model directory that does not exist, so it fails fast and for a known reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.security.audit_fields import assert_guide_fields, file_lines, rows

from .conftest import LiveServer


@pytest.mark.slow
def test_an_export_job_is_audited_when_accepted_and_when_it_ends(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = live_server(model=str(tmp_path / "no-such-model"))  # auth disabled: loopback is admin
    database = server.app.state.database
    log_dir = server.settings.resolved_log_dir
    with server.client() as client:
        started = client.post("/export", json={"platform": "android", "quantization": "int8"})
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]
        deadline = time.monotonic() + 300
        body: Any = None
        while time.monotonic() < deadline:
            body = client.get(f"/export/{job_id}").json()
            if body["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.5)
    assert body["status"] == "failed", body

    (request,) = rows(database, "export.request")
    assert_guide_fields(request, file_lines(log_dir, "export.request")[0])
    assert (request.user_id, request.source_ip, request.resource) == (
        "anonymous",
        "127.0.0.1",
        f"export:{job_id}",
    )
    assert request.details == {"platform": "android", "format": "onnx", "quantization": "int8"}

    finish = _wait_rows(database, "export.finish")
    assert_guide_fields(finish, file_lines(log_dir, "export.finish")[0])
    assert (finish.result, finish.resource) == ("failure", f"export:{job_id}")
    assert finish.details["status"] == "failed" and finish.details["error_code"] == "EXPORT_MODEL_INVALID"
    assert finish.user_id == body["requested_by"]


def _wait_rows(database: Any, action: str, timeout_s: float = 120) -> Any:
    """The job's thread audits right after the row is final; the poll above may see it first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = rows(database, action)
        if found:
            (row,) = found
            return row
        time.sleep(0.1)
    raise TimeoutError(f"no {action} row within {timeout_s} s")
