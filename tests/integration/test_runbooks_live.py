"""The operator docs against the live service, the real Prometheus and the real Alertmanager.

One app (API keys required, a /metrics token, integrity checks every second, a one-slot queue),
Prometheus with our prometheus.yml and alerts.yml (``for:`` 0 s) and Alertmanager with our routing
(receivers turned into a local webhook). The test makes each security event happen once, as one
burst, and then checks what the docs (tests/monitoring/doc_items.py) say about it:

- each alert fires on its first qualifying burst (the counters exist at 0 before it);
- every grep of the runbooks, run with the real ``grep`` on the file it names, matches the line the
  event wrote (the app's log file, its stdout, or /metrics);
- every ``promtool query instant`` runs (the real promtool, against this Prometheus) and every
  PromQL block parses; queries and documented ``label="value"`` series return data unless the
  metric is in ``NO_DATA_HERE`` with the reason;
- every curl that reads (GET) runs against the app; the access-log example has the real fields.

What cannot run here says so: Loki (LogQL) and the GPU endpoint are skips with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import yaml

from mobile_multimodal.observability import metrics
from mobile_multimodal.serving.schemas import Task
from monitoring import doc_items
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

from .servers import MOBILE_MM, REPO, AppServer, scene_png_b64, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB = "mobile-multimodal-llm"
TOKEN = "runbook-test-metrics-token-0123456789"
RUNBOOK_BASE = "https://docs.example.org/mobile-mm/"
# Metrics whose documented series or queries return nothing in this test, and why.
NO_DATA_HERE = {
    "gpu_memory_usage_bytes": "no GPU on this machine",
    "mobile_export": "no mobile export runs in this test (tests/integration/test_export_e2e.py)",
    "quantization_": "the served model is fp32: nothing is shadowed or compared",
    "model_accuracy": "the canary does not run in this test (tests/integration/test_canary_alert_e2e.py)",
    "model_canary": "the canary does not run in this test (tests/integration/test_canary_alert_e2e.py)",
    "backup_": "no backup runs in this test",
    "disk_free_percent[6h]": "predict_linear needs two samples hours apart",
    "trace_spans_dropped_total": "no span is dropped",
    "model_load_failures_total": "the model loads (test_alerting_e2e.py loads a broken one)",
    'component="reference_model"': "the fp32 reference exists only beside a quantized model",
    "batch_processing_duration_seconds": "batch_size 32 is never reached by this test's traffic",
    "error_rate_by_endpoint": "the app's 60 s window holds no timeout",
    "model_prediction_confidence": "documented for OCR; this test sends captioning",
    'user_id="user123"': "an example user id",
    "config_changes_total": "the change happens at a restart, after Prometheus stopped scraping",
}
# Greps that cannot match here, and why.
GREP_NOT_HERE = {
    "notify": "Alertmanager logs 'notify' only when a notification fails; the test's receiver works",
    "gpu_memory_usage_bytes": "no GPU on this machine",
}


def _no_data_reason(text: str) -> str | None:
    return next((why for key, why in NO_DATA_HERE.items() if key in text), None)


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 300) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.5)


@dataclass
class Live:
    app: AppServer
    prom: PrometheusProcess
    am: AlertmanagerProcess
    user_key: str
    routes: set[tuple[str, str]]  # (method, path) of the served OpenAPI schema

    def metrics_text(self) -> str:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.get(f"{self.app.url}/metrics", headers=headers, timeout=60).text


def _create_key(app: AppServer, *args: str) -> str:
    result = subprocess.run(
        [str(MOBILE_MM), "keys", "create", "--json", *args],
        env=app.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return str(json.loads(result.stdout)["key"])


def _routes(app: AppServer, key: str) -> set[tuple[str, str]]:
    """The schema's operations, read once with the key (the schema takes one like the API, and
    the tests below use the key up to its rate limit)."""
    schema = httpx.get(f"{app.url}/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert schema.status_code == 200, schema.text
    return {(m.upper(), p) for p, ops in schema.json()["paths"].items() for m in ops}


def _events(live: Live) -> None:
    """Each event once, as one burst."""
    url = live.app.url
    with httpx.Client(base_url=url, timeout=60) as client:
        bad = {"Authorization": "Bearer mm_this_key_does_not_exist"}
        for _ in range(12):  # AuthenticationFailures: > 10 in 5 minutes
            assert client.post("/inference", json={"task": "ocr"}, headers=bad).status_code == 401
        for i in range(6):  # AnomalousRequests: > 5 (path traversal probes)
            client.get(f"/..%2f..%2fetc/passwd{i}")
        user = {"Authorization": f"Bearer {live.user_key}"}
        assert client.get("/export/x", headers=user).status_code == 403  # UnauthorizedAccess
        assert client.get("/metrics").status_code == 401  # missing_metrics_token
    not_an_image = {"task": "captioning", "image": "aGVsbG8="}  # UNSUPPORTED_IMAGE_FORMAT
    assert httpx.post(f"{url}/inference", json=not_an_image, headers=user, timeout=60).status_code == 415
    image = scene_png_b64()

    def one(_: int) -> int:
        body = {"task": "captioning", "image": image}
        return httpx.post(f"{url}/inference", json=body, headers=user, timeout=120).status_code

    with ThreadPoolExecutor(16) as pool:  # a one-slot queue: CapacityPlanningQueueSaturation
        codes = list(pool.map(one, range(16)))
    assert 503 in codes and 200 in codes, codes
    weights = live.app.model_dir / "model.safetensors"  # ModelTampering
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def live(served_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    missing = missing_binaries("prometheus", "promtool", AlertmanagerProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs them)")
    tmp = tmp_path_factory.mktemp("runbooks-live")
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shortened_rules(load_yaml(MONITORING / "alerts.yml"))))
    token_file = tmp / "metrics_token"
    token_file.write_text(TOKEN)
    model = Path(shutil.copytree(served_model_dir, tmp / "model"))
    env = {
        "MOBILE_MM_AUTH": "required",
        "MOBILE_MM_METRICS_TOKEN": TOKEN,
        "MOBILE_MM_INTEGRITY_CHECK_INTERVAL_S": "1",
        "MOBILE_MM_MAX_QUEUE": "1",
        "MOBILE_MM_MAX_BATCH_SIZE": "1",
    }
    (tmp / "app").mkdir()
    with (
        WebhookReceiver() as hook,
        AlertmanagerProcess(
            tmp / "am", webhook_variant(load_yaml(MONITORING / "alertmanager.yml"), hook.url)
        ) as am,
        AppServer(model, tmp / "app", env) as app,
    ):
        prom = PrometheusProcess(tmp / "prom", {})
        targets = {JOB: [f"127.0.0.1:{app.port}"], "prometheus": [f"127.0.0.1:{prom.port}"]}
        prom_config = prometheus_test_config(rules, targets, f"127.0.0.1:{am.port}", token_file)
        # the operator's setting that turns runbook_url into a link (monitoring/prometheus.yml)
        prom_config["global"]["external_labels"] = {"runbook_base_url": RUNBOOK_BASE}
        prom.config_path.write_text(yaml.safe_dump(prom_config))
        with prom:
            key = _create_key(app, "--user", "runbook-user")
            state = Live(app, prom, am, key, _routes(app, key))
            # The series the first-burst alerts read exist at 0 before any event.
            series = [f'auth_failures_total{{reason="{r}"}}' for r in metrics.AUTH_FAILURE_REASONS]
            series += [f'security_events_total{{event_type="{e}"}}' for e in metrics.SECURITY_EVENT_TYPES]
            series += [f'inference_queue_rejections_total{{task="{t}"}}' for t in get_args(Task)]
            for selector in series:
                _wait(f"{selector} at 0", lambda s=selector: prom.query(f"{s} == 0"))
            _events(state)
            yield state


FIRST_BURST_ALERTS = (
    "AuthenticationFailures",
    "AnomalousRequests",
    "UnauthorizedAccess",
    "ModelTampering",
    "CapacityPlanningQueueSaturation",
)


@pytest.mark.parametrize("alert", FIRST_BURST_ALERTS)
def test_alert_fires_on_its_first_burst(live: Live, alert: str) -> None:
    _wait(f"{alert} firing", lambda: alert in live.prom.firing())


def test_alerts_reach_alertmanager_with_the_runbook_base_url(live: Live) -> None:
    alerts = _wait(
        "AuthenticationFailures in Alertmanager", lambda: live.am.alerts('alertname="AuthenticationFailures"')
    )
    assert alerts[0]["labels"]["runbook_base_url"] == RUNBOOK_BASE
    assert alerts[0]["annotations"]["runbook_url"] == "docs/runbooks/AuthenticationFailures.md"


def _grep(args: tuple[str, ...], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["grep", *args], input=text, capture_output=True, text=True, timeout=600, check=False
    )


GREPS = [g for g in doc_items.grep_uses() if "config.change" not in g.args[-1]]


@pytest.mark.parametrize("use", GREPS, ids=[f"{g.doc}:{g.args[-1]}" for g in GREPS])
def test_documented_grep_matches_the_line_the_event_wrote(live: Live, use: doc_items.GrepUse) -> None:
    reason = next((why for key, why in GREP_NOT_HERE.items() if key in use.args[-1]), None)
    if reason:
        pytest.skip(f"{use.command}: {reason}")
    _wait("the alerts", lambda: set(FIRST_BURST_ALERTS) <= set(live.prom.firing()))
    sources = {
        "app_log": lambda: (live.app.log_dir / "application.log").read_text(),
        "app_stdout": lambda: live.app.stdout_path.read_text(),
        "metrics": live.metrics_text,
    }
    assert use.source in sources, f"{use.doc}: no live source for `{use.command}`"
    result = _wait(f"`{use.command}` matching", lambda: _grep(use.args, sources[use.source]()).stdout)
    assert result.strip(), use.command


def test_config_change_grep_matches_after_a_restart(live: Live) -> None:
    """The ConfigurationChange runbook's grep, on the log of a restart with another setting."""
    (use,) = [g for g in doc_items.grep_uses() if "config.change" in g.args[-1]]
    assert use.source == "app_log"
    # A second process on the same data directory with another MOBILE_MM_MAX_QUEUE: at start it
    # finds the stored configuration differs (the restart of an operator who changed a setting).
    log_dir = live.app.log_dir
    db = live.app.workdir / "data"
    assert db.is_dir()
    restart = AppServer(live.app.model_dir, live.app.workdir, {**live.app.env, "MOBILE_MM_MAX_QUEUE": "3"})
    restart.env["MOBILE_MM_DATA_DIR"] = live.app.env["MOBILE_MM_DATA_DIR"]
    restart.stdout_path = live.app.workdir / "stdout-config-change.log"
    restart.model_dir = _restored_copy(live.app.model_dir, live.app.workdir / "model-restored")
    with restart:
        pass
    result = _grep(use.args, (log_dir / "application.log").read_text())
    assert result.returncode == 0, f"`{use.command}` matched nothing"
    assert '"action": "config.change"' in result.stdout


def _restored_copy(tampered: Path, dest: Path) -> Path:
    if not dest.exists():
        shutil.copytree(tampered, dest)
        weights = dest / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # undo the test's tampering: the loader checks every sha256
        weights.write_bytes(bytes(data))
    return dest


QUERIES = doc_items.promql_queries()
EVENT_COUNTERS = ("auth_failures_total", "inference_queue_rejections_total", "security_events_total")
PROMTOOL_QUERIES = {q for c in doc_items.shell_commands() if (q := doc_items.promtool_query(c.text))}


@pytest.mark.parametrize("query", QUERIES, ids=[f"{q.doc}:{q.text[:50]}" for q in QUERIES])
def test_documented_query_runs_and_returns_data(live: Live, query: doc_items.DocItem) -> None:
    _wait("the alerts", lambda: set(FIRST_BURST_ALERTS) <= set(live.prom.firing()))
    live.prom.query(query.text)  # parses and evaluates, or raises with Prometheus's error
    if query.text not in PROMTOOL_QUERIES:
        return  # a rule's expression (```promql block): it has data only while its alert fires
    if _no_data_reason(query.text):
        return
    result = subprocess.run(
        ["promtool", "query", "instant", live.prom.url, query.text],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), f"{query.doc}: `{query.text}` returned no series"
    if any(name in query.text for name in EVENT_COUNTERS):
        # a runbook's diagnosis of an event this test made: it must show the event, not 0
        values = [float(r["value"][1]) for r in live.prom.query(query.text)]
        assert max(values) > 0, f"{query.doc}: `{query.text}` shows {values} after its event"


SERIES = doc_items.label_values()


@pytest.mark.parametrize("series", SERIES, ids=[f"{s[0]}:{s[1]}{{{s[2]}={s[3]}}}" for s in SERIES])
def test_documented_series_exists(live: Live, series: tuple[str, str, str, str]) -> None:
    doc, metric, label, value = series
    reason = _no_data_reason(f'{metric}{{{label}="{value}"}}') or (
        label == "le" and "bucket boundaries depend on observations"
    )
    if label == "quantization" or label == "version":
        reason = "the test serves the fp32 tiny/bundled model; the docs show int2 0.1.0"
    if (label, value) == ("runtime", "onnxruntime"):
        reason = "the test serves PyTorch; tests/serving/test_onnx_runtime.py scrapes runtime=onnxruntime"
    if reason:
        pytest.skip(f"{metric}{{{label}={value!r}}}: {reason}")
    selector = f'{metric}{{{label}="{value}"}}'
    if (label, value) == ("path", "/app/data"):  # the container's data directory; here a tmp dir
        selector = f'{metric}{{{label}="{live.app.env["MOBILE_MM_DATA_DIR"]}"}}'
    _wait("the alerts", lambda: set(FIRST_BURST_ALERTS) <= set(live.prom.firing()))
    found = _wait(f"{selector} in Prometheus", lambda: live.prom.query(selector), timeout_s=120)
    assert found, f"{doc}: {selector} has no series"


def test_logql_needs_loki() -> None:
    queries = doc_items.logql_queries()
    assert queries
    pytest.skip(
        f"{len(queries)} LogQL queries: Loki is not run here (tests/monitoring/test_docs.py parses them)"
    )


CURLS = [c for c in doc_items.shell_commands() if c.text.startswith("curl")]


@pytest.mark.parametrize("command", CURLS, ids=[f"{c.doc}:{c.text[:60]}" for c in CURLS])
def test_documented_curl(live: Live, command: doc_items.DocItem) -> None:
    words = doc_items.pipeline(command.text)[0]
    url = next(w for w in words if "localhost:" in w)
    port = re.search(r"localhost:(\d+)", url)
    assert port, url
    path = "/" + url.split(port.group(0), 1)[1].lstrip("/")
    method = words[words.index("-X") + 1] if "-X" in words else ("POST" if "-d" in words else "GET")
    if port.group(1) == "8081":
        pytest.skip("the GPU service (app-gpu, :8081) needs a GPU")
    if port.group(1) == "9093":
        assert method == "POST" and path == "/-/reload", command.text
        assert httpx.post(f"{live.am.url}{path}", timeout=60).status_code == 200
        return
    if port.group(1) == "9090":
        compose = (REPO / "docker-compose.yml").read_text()
        assert "--web.enable-lifecycle" in compose
        pytest.skip(
            f"{command.text}: the test's Prometheus runs without --web.enable-lifecycle; compose sets it"
        )
    assert port.group(1) == "8080", command.text
    routes = live.routes
    template = re.sub(r"/\$\w+$", "/{export_id}", path)
    assert (method, template) in routes or path in ("/metrics",), (
        f"{command.text}: no route {method} {template}"
    )
    if method == "GET" and "$" not in path:
        headers = {"Authorization": f"Bearer {TOKEN}"} if path == "/metrics" else {}
        response = httpx.get(f"{live.app.url}{path}", headers=headers, timeout=60)
        assert response.status_code in (200, 503), response.text  # /health is 503 while tampered
        stages = doc_items.pipeline(command.text)
        if len(stages) > 1 and stages[1][0] == "grep":
            assert _grep(tuple(stages[1][1:]), response.text).returncode == 0, command.text


def test_access_log_example_has_the_real_fields(live: Live) -> None:
    doc = (REPO / "docs" / "monitoring.md").read_text()
    example = json.loads(doc.split("One JSON object per line:\n\n```json\n", 1)[1].split("```", 1)[0])
    lines = [json.loads(ln) for ln in (live.app.log_dir / "application.log").read_text().splitlines()]
    real = next(ln for ln in lines if ln.get("operation") == "http_request" and ln.get("status") == 200)
    assert set(example) == set(real), set(example) ^ set(real)
    assert re.fullmatch(r"POST /inference 200 [\d.]+ms", example["message"])
    assert any(re.fullmatch(r"POST /inference 200 [\d.]+ms", ln["message"]) for ln in lines)
