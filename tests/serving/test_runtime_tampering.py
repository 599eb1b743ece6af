"""The decision docs/monitoring.md ("Model tampering while the service runs") describes, on a
served app: the model file deleted, then ``manifest.json`` rewritten, while serving. The service
keeps answering with the weights it verified at load; ``/health`` and ``/model/health`` say 503
``MODEL_INTEGRITY_FAILED``, ``model_integrity_ok`` is 0 (ModelTampering), each incident is
counted once and audited; ``/ready`` stays 200; restoring the files clears it all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tests.integration.servers import wait_for
from tests.security.audit_fields import assert_guide_fields, file_lines, rows

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.serving.engine import default_loader

from .conftest import LiveServer, metric_value, served_caption


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float = 120.0) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.05)


def _integrity_ok(client: httpx.Client) -> float:
    return metric_value(client.get("/metrics").text, "model_integrity_ok")


def test_a_deleted_model_file_and_a_rewritten_manifest_while_serving(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    trusted = Path(shutil.copytree(model_dir, tmp_path / "trusted-copy"))
    server = live_server(loader=default_loader, model=str(model_dir), integrity_check_interval_s=0.2)
    database = server.app.state.database
    with server.client() as client:
        _wait_for("a passing integrity check", lambda: _integrity_ok(client) == 1)
        caption = served_caption(client)
        failures = metric_value(
            client.get("/metrics").text, "model_integrity_failures_total", model_type="multimodal"
        )

        (model_dir / "model.safetensors").unlink()
        _wait_for("model_integrity_ok 0", lambda: _integrity_ok(client) == 0)
        health = client.get("/health")
        assert health.status_code == 503
        (error,) = [e for e in health.json()["errors"] if e["component"] == "model"]
        assert error["code"] == "MODEL_INTEGRITY_FAILED" and "model.safetensors (missing)" in error["message"]
        model_health = client.get("/model/health")
        assert model_health.status_code == 503
        assert model_health.json()["integrity"]["status"] == "unhealthy"
        assert model_health.json()["error"]["code"] == "MODEL_INTEGRITY_FAILED"
        # still serving the verified weights in memory
        assert client.get("/ready").status_code == 200 and served_caption(client) == caption
        (incident,) = rows(database, "model.integrity_check")
        assert [(m["path"], m["reason"]) for m in incident.details["mismatches"]] == [
            ("model.safetensors", "missing")
        ]
        assert_guide_fields(
            incident, file_lines(server.settings.resolved_log_dir, "model.integrity_check")[0]
        )

        # the manifest rewritten too (any change to what was loaded): another incident
        manifest = json.loads((model_dir / "manifest.json").read_text())
        manifest["version"] = "9.9.9"
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
        second = _wait_for("a second incident", lambda: rows(database, "model.integrity_check")[1:])
        assert {m["path"] for m in second[0].details["mismatches"]} == {"model.safetensors", "manifest.json"}
        assert (
            metric_value(
                client.get("/metrics").text, "model_integrity_failures_total", model_type="multimodal"
            )
            == failures + 2
        )

        for name in ("model.safetensors", "manifest.json"):  # restored from the trusted copy
            shutil.copy2(trusted / name, model_dir / name)
        _wait_for("model_integrity_ok 1", lambda: _integrity_ok(client) == 1)
        assert client.get("/health").status_code == 200
        assert client.get("/model/health").json()["integrity"]["status"] == "healthy"
        assert rows(database, "model.integrity_check")[-1].details.get("recovered") is True
        assert served_caption(client) == caption
