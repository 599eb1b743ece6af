"""End to end, all on 127.0.0.1: the real app under traffic, the real Prometheus with our
prometheus.yml and alerts.yml, the real Alertmanager with our routing, a local receiver.

- Prometheus runs a copy of monitoring/prometheus.yml (1 s scrape and evaluation, targets at the
  test's ports) with monitoring/alerts.yml whose ``for:`` durations are 0 s; expressions as written.
- Alertmanager runs monitoring/alertmanager.yml with every receiver turned into a webhook to
  the test's receiver (routes and inhibit rules unchanged; group_wait 1 s).
- Two app instances: one healthy, serving traffic (20% of it bad input), one started on a model
  directory whose weights were tampered with, so its model load fails.

Then: the failed load pages (ModelLoadingFailure -> pagerduty-critical), the error rate warns
(HighErrorRate -> slack-warnings), the deployment is mailed (NewModelDeployment -> email-info),
stopping the broken instance pages (ServiceDown); every PromQL expression of alerts.yml and of
the dashboards runs without error, and the dashboard queries return data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitoring.localstack import (
    MONITORING,
    AlertmanagerProcess,
    NodeExporterProcess,
    PrometheusProcess,
    WebhookReceiver,
    load_yaml,
    missing_binaries,
    prometheus_test_config,
    shortened_rules,
    webhook_variant,
)
from monitoring.test_dashboards import dashboard_queries

from .servers import MOBILE_MM, REPO, AppServer, scene_png_b64, wait_for, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB = "mobile-multimodal-llm"
GOOD_REQUESTS = 24
BAD_REQUESTS = 6  # 20% of all requests: above HighErrorRate's 10%, below ErrorRateCritical's 50%

# Dashboard queries allowed to return nothing here, and why.
NO_DATA_HERE = {
    "gpu_memory_usage_bytes": "no GPU on this machine",
    "quantization_accuracy_loss": "the served model is fp32: nothing to compare against",
    "quantization_shadow_comparisons_total": "the served model is fp32: nothing is shadowed",
    "inference_queue_rejections_total": "the batcher queue never fills",
    "changes(process_start_time_seconds": "no app restarts during the test",
    "backup_failures_total": "no backup fails during the test",
    "node_network_": "node-exporter may see no non-loopback interface in a sandbox",
}


class BrokenModelApp(AppServer):
    """An app whose model cannot load: it answers /alive (and /metrics) but never /ready."""

    def start(self, ready_timeout_s: float = 300) -> AppServer:
        with self.stdout_path.open("wb") as out:
            self._proc = subprocess.Popen(
                [
                    str(MOBILE_MM),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--model",
                    str(self.model_dir),
                ],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_http(f"{self.url}/alive", ready_timeout_s, self._proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"the app did not start:\n{self.stdout_path.read_text()[-3000:]}") from exc
        return self


def _tamper(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one changed byte in the last tensor: same size, another sha256
    weights.write_bytes(bytes(data))


def _tampered_copy(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    _tamper(dest)
    return dest


class Stack:
    def __init__(
        self,
        good_model: Path,
        hook: WebhookReceiver,
        prom: PrometheusProcess,
        am: AlertmanagerProcess,
        good: AppServer,
        broken: AppServer,
    ) -> None:
        self.good_model, self.hook, self.prom, self.am = good_model, hook, prom, am
        self.good, self.broken = good, broken
        self.traffic_sent = False

    def ensure_traffic(self) -> None:
        """The good instance's traffic, sent once for the tests that need it, in whatever order
        they run."""
        if not self.traffic_sent:
            _send_traffic(self.good)
            self.traffic_sent = True

    def wait_scrapes(self, n: int) -> None:
        """Wait until Prometheus has scraped the good instance ``n`` more times (however long a
        busy machine makes its 1 s interval)."""
        instance = f'instance="127.0.0.1:{self.good.port}"'
        stamps: set[float] = set()

        def scraped() -> bool:
            stamps.update(float(r["value"][1]) for r in self.prom.query(f"timestamp(up{{{instance}}})"))
            return len(stamps) > n

        _wait(f"{n} more scrapes", scraped)


@pytest.fixture(scope="module")
def stack(served_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = missing_binaries("prometheus", AlertmanagerProcess.binary, NodeExporterProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs them)")
    tmp = tmp_path_factory.mktemp("alerting-e2e")
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shortened_rules(load_yaml(MONITORING / "alerts.yml"))))
    broken_model = _tampered_copy(served_model_dir, tmp / "tampered-model")
    good_model = Path(shutil.copytree(served_model_dir, tmp / "good-model"))  # tampered with later
    with (
        WebhookReceiver() as hook,
        AlertmanagerProcess(
            tmp / "am", webhook_variant(load_yaml(MONITORING / "alertmanager.yml"), hook.url)
        ) as am,
        NodeExporterProcess(tmp / "node") as node,
        AppServer(good_model, _mkdir(tmp / "good"), {"MOBILE_MM_INTEGRITY_CHECK_INTERVAL_S": "1"}) as good,
        BrokenModelApp(broken_model, _mkdir(tmp / "broken")) as broken,
    ):
        targets = {
            JOB: [f"127.0.0.1:{good.port}", f"127.0.0.1:{broken.port}"],
            "node": [f"127.0.0.1:{node.port}"],
            "alertmanager": [f"127.0.0.1:{am.port}"],
        }
        prom = PrometheusProcess(tmp / "prom", {})
        targets["prometheus"] = [f"127.0.0.1:{prom.port}"]
        prom.config_path.write_text(
            yaml.safe_dump(prometheus_test_config(rules, targets, f"127.0.0.1:{am.port}"))
        )
        with prom:
            yield Stack(good_model, hook, prom, am, good, broken)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _wait(what: str, check: Any, timeout_s: float = 60) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.5)


def _send_traffic(app: AppServer) -> None:
    """Good and bad requests interleaved over several scrapes.

    A labelled counter is born at its first increment, so rate() sees it from its second sample:
    errors spread over time (a sustained error rate) are what the rate alerts are for.
    """
    tasks = ["captioning", "ocr", "vqa"]
    with httpx.Client(base_url=app.url, timeout=60) as client:
        for i in range(GOOD_REQUESTS + BAD_REQUESTS):
            if i % 5 == 4:
                response = client.post(
                    "/inference", json={"image": "this is not an image", "task": "captioning"}
                )
                assert 400 <= response.status_code < 500, response.text
            else:
                body: dict[str, Any] = {"image": scene_png_b64(seed=i), "task": tasks[i % 3]}
                if body["task"] == "vqa":
                    body["question"] = "what color is the shape?"
                response = client.post("/inference", json=body)
                assert response.status_code == 200, response.text
            time.sleep(0.25)


def _receiver(note: dict[str, Any]) -> str:
    return str(note["receiver"]).replace("\\", "")  # Alertmanager regexp-quotes the name


def test_targets_are_scraped(stack: Stack) -> None:
    up = _wait(
        "every target up",
        lambda: len([r for r in stack.prom.query("up == 1")]) >= 5 and stack.prom.query("up"),
    )
    assert {r["metric"]["job"] for r in up} == {JOB, "node", "alertmanager", "prometheus"}
    assert all(r["metric"]["environment"] == "production" for r in up)


def test_failed_model_load_pages(stack: Stack) -> None:
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "ModelLoadingFailure", 90)
    assert _receiver(note) == "pagerduty-critical"
    (alert,) = note["alerts"]
    assert alert["labels"]["instance"] == f"127.0.0.1:{stack.broken.port}"
    assert alert["labels"]["reason"] == "MODEL_INTEGRITY_FAILED"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"] == "docs/runbooks/ModelLoadingFailure.md"
    firing = stack.prom.firing()
    assert "ServiceDown" not in firing
    # model_integrity_ok starts at 0 before any integrity check: that is not tampering.
    assert "ModelTampering" not in firing


def test_new_deployment_is_mailed(stack: Stack) -> None:
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "NewModelDeployment", 90)
    assert _receiver(note) == "email-info"
    instances = {a["labels"]["instance"] for a in note["alerts"]}
    assert f"127.0.0.1:{stack.good.port}" in instances


def test_error_rate_warns(stack: Stack) -> None:
    stack.ensure_traffic()
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "HighErrorRate", 90)
    assert _receiver(note) == "slack-warnings"
    ratio = stack.prom.query(
        f'sum(rate(model_inference_requests_total{{job="{JOB}", status!="success"}}[5m]))'
        f' / sum(rate(model_inference_requests_total{{job="{JOB}"}}[5m]))'
    )
    assert 0.1 < float(ratio[0]["value"][1]) < 0.5
    assert "ErrorRateCritical" not in stack.prom.firing()


def test_rules_evaluate_without_errors(stack: Stack) -> None:
    groups = stack.prom.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len([r for g in load_yaml(MONITORING / "alerts.yml")["groups"] for r in g["rules"]])
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_every_alert_expression_runs(stack: Stack) -> None:
    for group in load_yaml(MONITORING / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            stack.prom.query(rule["expr"])  # raises with Prometheus's error on a bad expression


def _grafana_to_promql(expr: str) -> str:
    """What Grafana sends for this panel when every variable is "All"."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
    return re.sub(r"\$\{?(environment|model_type|instance)\}?", ".*", expr)


def test_dashboard_queries_run_and_return_data(stack: Stack) -> None:
    stack.ensure_traffic()
    _wait(
        "traffic scraped",
        lambda: stack.prom.query(f'model_inference_requests_total{{job="{JOB}", status="success"}}'),
    )
    stack.wait_scrapes(3)  # a few more scrapes so rate() over the 1 m windows has points
    empty = []
    # the export dashboard's queries run, with real exports behind them, in test_export_e2e.py
    exprs = [e for e in dashboard_queries() if "mobile_export" not in e]
    for expr in exprs:
        result = stack.prom.query(_grafana_to_promql(expr))
        if not result:
            empty.append(expr)
    unexplained = [e for e in empty if not any(key in e for key in NO_DATA_HERE)]
    assert not unexplained, "dashboard queries without data:\n" + "\n".join(unexplained)
    assert len(exprs) - len(empty) >= 0.7 * len(exprs), (
        f"only {len(exprs) - len(empty)}/{len(exprs)} with data"
    )


def test_dashboard_variables_have_values(stack: Stack) -> None:
    dashboards = [
        yaml.safe_load(p.read_text()) for p in (MONITORING / "grafana" / "dashboards").glob("*.json")
    ]
    for variable in dashboards[0]["templating"]["list"]:
        selector, label = variable["query"].removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
        values = {r["metric"].get(label.strip()) for r in stack.prom.query(_grafana_to_promql(selector))}
        assert values - {None}, f"variable {variable['name']} would have no values"


def test_service_down_pages(stack: Stack) -> None:
    stack.broken.stop()
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "ServiceDown", 90)
    assert _receiver(note) == "pagerduty-critical"
    assert [a["labels"]["instance"] for a in note["alerts"]] == [f"127.0.0.1:{stack.broken.port}"]


def test_runtime_tampering_pages(stack: Stack) -> None:
    """A weights file changed under the running app: the integrity check pages ModelTampering."""
    instance = f'instance="127.0.0.1:{stack.good.port}"'
    # The app checks every second (MOBILE_MM_INTEGRITY_CHECK_INTERVAL_S=1): a passing check first.
    _wait(
        "a passing integrity check scraped",
        lambda: stack.prom.query(
            f"model_integrity_ok{{{instance}}} == 1"
            f" and on (instance) model_integrity_last_check_timestamp_seconds{{{instance}}} > 0"
        ),
    )
    assert "ModelTampering" not in stack.prom.firing()
    _tamper(stack.good_model)
    note = stack.hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "ModelTampering", 90)
    assert _receiver(note) == "pagerduty-critical"
    assert [a["labels"]["instance"] for a in note["alerts"]] == [f"127.0.0.1:{stack.good.port}"]
