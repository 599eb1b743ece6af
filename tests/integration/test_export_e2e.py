"""Export monitoring end to end, all on 127.0.0.1, with real exports of the served model.

- The real app (``mobile-mm serve``, API keys required) runs an export job for an admin key
  (``POST /export``: android, ONNX, INT2); ``mobile-mm export`` runs two more from the command
  line against the same data directory: one that succeeds (ios, ONNX, fp32) and one that fails
  (a model directory that does not exist).
- Each pushes its group's history to a real Pushgateway (Debian ``prometheus-pushgateway``); the
  real Prometheus runs our prometheus.yml (its ``pushgateway`` job with ``honor_labels``, 1 s
  scrapes) and alerts.yml (``for:`` shortened), the real Alertmanager our routing.

Then: the Mobile Export Monitoring dashboard's queries return those exports' series, the failed
export fires MobileExportFailures through Alertmanager to its receiver, refused calls to the
admin route fire UnauthorizedAccess, and the guide's LogQL filter matches the exports' log lines.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import Database
from monitoring.localstack import (
    MONITORING,
    AlertmanagerProcess,
    PrometheusProcess,
    WebhookReceiver,
    load_yaml,
    missing_binaries,
    prometheus_test_config,
    shortened_rules,
    webhook_variant,
)
from monitoring.pushgateway import PushgatewayProcess

from .servers import MOBILE_MM, REPO, AppServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB = "mobile-multimodal-llm"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "mobile-export-monitoring.json"
# Export dashboard queries allowed to return nothing here, and why.
NO_DATA_HERE = {"quantization_accuracy_loss": "the served model is fp32: nothing to compare against"}
EXPORT_TIMEOUT_S = 900  # three real exports on a busy 2-core machine


class Stack:
    def __init__(self, **parts: Any) -> None:
        self.hook: WebhookReceiver = parts["hook"]
        self.prom: PrometheusProcess = parts["prom"]
        self.app: AppServer = parts["app"]
        self.gateway: PushgatewayProcess = parts["gateway"]
        self.admin_key: str = parts["admin_key"]
        self.user_key: str = parts["user_key"]
        self.model_dir: Path = parts["model_dir"]
        self.tmp: Path = parts["tmp"]
        self.results: dict[str, Any] = {}


@pytest.fixture(scope="module")
def stack(served_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = missing_binaries("prometheus", AlertmanagerProcess.binary, PushgatewayProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs them)")
    tmp = tmp_path_factory.mktemp("export-e2e")
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shortened_rules(load_yaml(MONITORING / "alerts.yml"))))
    (tmp / "app").mkdir()
    with (
        WebhookReceiver() as hook,
        AlertmanagerProcess(
            tmp / "am", webhook_variant(load_yaml(MONITORING / "alertmanager.yml"), hook.url)
        ) as am,
        PushgatewayProcess(tmp / "pushgateway") as gateway,
        AppServer(
            served_model_dir,
            tmp / "app",
            {"MOBILE_MM_AUTH": "required", "MOBILE_MM_PUSHGATEWAY_URL": gateway.url},
        ) as app,
    ):
        with Database(f"sqlite:///{tmp / 'app' / 'data' / 'mobile_mm.db'}") as db:  # the app's
            admin_key, _ = create_key(db, "ops", "pro", admin=True)
            user_key, _ = create_key(db, "alice")
        targets = {JOB: [f"127.0.0.1:{app.port}"], "pushgateway": [f"127.0.0.1:{gateway.port}"]}
        prom = PrometheusProcess(tmp / "prom", {})
        prom.config_path.write_text(
            yaml.safe_dump(prometheus_test_config(rules, targets, f"127.0.0.1:{am.port}"))
        )
        with prom:
            yield Stack(
                hook=hook,
                prom=prom,
                app=app,
                gateway=gateway,
                admin_key=admin_key,
                user_key=user_key,
                model_dir=served_model_dir,
                tmp=tmp,
            )


def _wait(what: str, check: Any, timeout_s: float = 90) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.5)


def _cli_export(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``mobile-mm export`` as an operator runs it, against the app's data directory."""
    return subprocess.run(
        [str(MOBILE_MM), "export", *args],
        cwd=REPO,
        env=stack.app.env,
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_S,
        check=False,
    )


def _receiver(note: dict[str, Any]) -> str:
    return str(note["receiver"]).replace("\\", "")


def _grafana_to_promql(expr: str) -> str:
    """What Grafana sends for this panel when every variable is "All"."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
    return re.sub(r"\$\{?(environment|model_type|instance)\}?", ".*", expr)


def test_real_exports_reach_prometheus_through_the_pushgateway(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    with httpx.Client(base_url=stack.app.url, timeout=60, headers=headers) as client:
        started = client.post("/export", json={"platform": "android", "quantization": "int2"})
        assert started.status_code == 202, started.text
        export_id = started.json()["id"]

        def finished() -> Any:
            response = client.get(f"/export/{export_id}")
            body = response.json() if response.status_code == 200 else {}
            return body if body.get("status") in ("succeeded", "failed") else None

        job = _wait("the export job", finished, EXPORT_TIMEOUT_S)
    assert job["status"] == "succeeded", job["error"]
    assert job["manifest"]["validation"]["executed"] is True

    ok = _cli_export(
        stack,
        "--platform",
        "ios",
        "--format",
        "onnx",
        "--model",
        str(stack.model_dir),
        "--out",
        str(stack.tmp / "ios-bundle"),
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    failed = _cli_export(
        stack,
        "--platform",
        "android",
        "--quantization",
        "int2",
        "--model",
        str(stack.tmp / "no-model"),
        "--out",
        str(stack.tmp / "never"),
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "EXPORT_MODEL_INVALID" in failed.stderr and not (stack.tmp / "never").exists()

    host = socket.gethostname()
    selector = f'job="{JOB}", instance="{host}", environment="production"'
    totals = _wait(
        "three exports scraped",
        lambda: (
            (
                r := stack.prom.query(
                    f"sum by (platform, format, quantization, status) (mobile_exports_total{{{selector}}})"
                )
            )
            and sum(float(x["value"][1]) for x in r) == 3
            and r
        ),
    )
    counts = {
        tuple(x["metric"][k] for k in ("platform", "format", "quantization", "status")): float(x["value"][1])
        for x in totals
        if float(x["value"][1])
    }
    assert counts == {
        ("android", "onnx", "int2", "success"): 1,
        ("ios", "onnx", "fp32", "success"): 1,
        ("android", "onnx", "int2", "failure"): 1,
    }
    scores = stack.prom.query(
        f'mobile_export_validation_score{{{selector}, format="onnx", quantization="int2"}}'
    )
    assert {x["metric"]["task"]: float(x["value"][1]) for x in scores} == pytest.approx(
        job["manifest"]["validation"]["tasks"]
    )
    size = stack.prom.query(
        f'mobile_export_size_bytes{{{selector}, platform="android", quantization="int2"}}'
    )
    assert float(size[0]["value"][1]) == sum(f["bytes"] for f in job["manifest"]["files"])
    stack.results["job"] = job


def test_dashboard_panels_show_the_exports(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        t["expr"]
        for p in dashboard["panels"]
        if p["type"] != "row"
        for t in p["targets"]
        if t["datasource"]["type"] == "prometheus"
    ]
    assert len(exprs) >= 9
    empty = [e for e in exprs if not stack.prom.query(_grafana_to_promql(e))]
    unexplained = [e for e in empty if not any(key in e for key in NO_DATA_HERE)]
    assert not unexplained, "export dashboard queries without data:\n" + "\n".join(unexplained)
    rate = stack.prom.query(_grafana_to_promql(exprs[0]))  # the success-rate stat: 2 of 3
    assert float(rate[0]["value"][1]) == pytest.approx(2 / 3, abs=0.01)


def test_the_failed_export_fires_mobile_export_failures(stack: Stack) -> None:
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "MobileExportFailures", 120)
    assert _receiver(note) == "slack-warnings"
    (alert,) = note["alerts"]
    labels = alert["labels"]
    assert (labels["platform"], labels["format"], labels["quantization"]) == ("android", "onnx", "int2")
    assert labels["instance"] == socket.gethostname()
    assert alert["annotations"]["runbook_url"] == "docs/runbooks/MobileExportFailures.md"
    assert "SlowMobileExport" not in stack.prom.firing()


def test_refused_admin_calls_fire_unauthorized_access(stack: Stack) -> None:
    with httpx.Client(base_url=stack.app.url, timeout=30) as client:
        forbidden = client.post(
            "/export", json={"platform": "android"}, headers={"Authorization": f"Bearer {stack.user_key}"}
        )
        assert forbidden.status_code == 403
        assert client.get("/export/anything").status_code == 401
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "UnauthorizedAccess", 120)
    assert _receiver(note) == "slack-warnings"
    assert [a["labels"]["instance"] for a in note["alerts"]] == [f"127.0.0.1:{stack.app.port}"]


def test_the_guides_log_query_matches_the_exports_lines(stack: Stack) -> None:
    """``{service="mobile-multimodal-llm"} | json | operation="mobile_export"``: Promtail labels the
    app's application.log with service=...; the json stage parses each line; the filter keeps these."""
    lines = [line for line in stack.app.log_lines() if line.get("operation") == "mobile_export"]
    assert all(line["service"] == JOB for line in lines)
    done = [
        (x["platform"], x["format"], x["quantization"])
        for x in lines
        if x["message"] == "mobile export completed"
    ]
    assert ("android", "onnx", "int2") in done and ("ios", "onnx", "fp32") in done
    (failed,) = [x for x in lines if x["level"] == "ERROR" and x.get("error_code") == "EXPORT_MODEL_INVALID"]
    assert (failed["platform"], failed["quantization"]) == ("android", "int2")
    job_line = next(
        x for x in lines if x["message"] == "mobile export completed" and x["platform"] == "android"
    )
    assert job_line["trace_id"] and job_line["duration_ms"] > 0
