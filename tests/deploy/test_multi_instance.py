"""Three instances of the service, as three replicas would run: one real PostgreSQL, one real Redis,
one real Prometheus that finds them through file-based service discovery.

Checked here, on real components only: a key's rate limit holds across the instances (Redis), a
revocation made on one instance is refused by every instance on its next request (keys are looked
up in the shared database on every request: nothing to invalidate), the alert rules aggregate
over instances (the error rate is one value for the service, ServiceDown names the one instance
that died), the dashboards' queries and the KEDA triggers run with several instances behind one
job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from tests.integration.redis_server import RedisServer
from tests.integration.redis_server import available as redis_missing
from tests.integration.servers import MOBILE_MM, REPO, AppServer, scene_png_b64, wait_for
from tests.monitoring.localstack import MONITORING, PrometheusProcess, load_yaml, shortened_rules
from tests.monitoring.test_dashboards import dashboard_queries
from tests.postgres import PgCluster

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import Database

from . import deploy_doc
from .manifests import by_kind, rendered

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB = "mobile-multimodal-llm"
NAMESPACE = "mobile-multimodal"  # the label the ServiceMonitor's targets carry in the cluster
FREE_BURST = 6
TOKEN = "multi-instance-metrics-token"
# Dashboard queries that may return nothing here, and why (the rest must return data).
NO_DATA_HERE = {
    "gpu_memory_usage_bytes": "no GPU on this machine",
    "quantization_accuracy_loss": "the served model is fp32: nothing to compare against",
    "quantization_shadow": "the served model is fp32: nothing is shadowed",
    "model_accuracy_baseline_score": "the canary sets it, and the canary is off",
    "model_accuracy_score": "the canary is off (MOBILE_MM_CANARY_INTERVAL_S=0): it would cost minutes here",
    "model_canary": "the canary is off",
    "inference_queue_rejections_total": "the batcher queue never fills",
    "changes(process_start_time_seconds": "no restarts during the test",
    "backup_": "no backups during the test",
    "node_": "no node-exporter in this test (tests/integration/test_alerting_e2e.py runs one)",
    "mobile_export": "no exports in this test (tests/integration/test_export_e2e.py)",
    "prometheus_rule_evaluation_failures_total": "Prometheus does not scrape itself in this test",
    "alertmanager_": "no Alertmanager in this test (tests/integration/test_alerting_e2e.py runs one)",
    "model_load_failures_total": "no model load fails here (the series is born at the first failure)",
}


@dataclass
class Deployment:
    apps: list[AppServer]
    prom: PrometheusProcess
    db_url: str
    free_key: str
    pro_key: str
    pro_key_id: str
    doomed_key: str
    doomed_key_id: str

    def instance(self, app: AppServer) -> str:
        return f"127.0.0.1:{app.port}"


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 120) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.25)


def _start_all(apps: list[AppServer]) -> None:
    """Start the instances side by side (each imports torch and loads the model)."""
    errors: list[BaseException] = []

    def start(app: AppServer) -> None:
        try:
            app.start(ready_timeout_s=300)
        except BaseException as exc:  # reported below, after every thread finished
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for app in apps:
            app.stop()
        raise errors[0]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster) -> Iterator[Deployment]:
    if (why := redis_missing()) is not None:
        pytest.fail(why)
    tmp = tmp_path_factory.mktemp("multi-instance")
    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp / "model")
    redis_server = RedisServer(tmp / "redis")
    apps: list[AppServer] = []
    try:
        redis_server.start()
        name = "mi_" + uuid.uuid4().hex[:10]
        pg_cluster.admin(f"CREATE DATABASE {name}")
        db_url = pg_cluster.url(name)
        db = Database(db_url)  # migrates the schema once, before the replicas start
        free_key, _ = create_key(db, "alice", "free")
        pro_key, pro = create_key(db, "bob", "pro")
        doomed_key, doomed = create_key(db, "carol", "pro")
        db.dispose()
        env = {
            "MOBILE_MM_AUTH": "required",
            "MOBILE_MM_DATABASE_URL": db_url,
            "MOBILE_MM_REDIS_URL": redis_server.url,
            "MOBILE_MM_REPLICAS": "3",
            "MOBILE_MM_METRICS_TOKEN": TOKEN,
            # 6 at once, then one per 100 s: no token comes back during the test
            "MOBILE_MM_RATE_LIMIT_FREE_PER_MINUTE": "0.6",
            "MOBILE_MM_RATE_LIMIT_FREE_BURST": str(FREE_BURST),
            "MOBILE_MM_CANARY_INTERVAL_S": "0",
            "MOBILE_MM_SHADOW_SAMPLE_RATE": "0",
            "MOBILE_MM_TORCH_THREADS": "1",
        }
        apps = [AppServer(model_dir, tmp / f"app{i}", env) for i in range(3)]
        for app in apps:
            app.workdir.mkdir()
        _start_all(apps)

        token_file = tmp / "metrics-token"
        token_file.write_text(TOKEN)
        targets = tmp / "targets.json"
        # what the ServiceMonitor's relabelling gives each pod's series in the cluster
        labels = {"environment": "production", "namespace": NAMESPACE}
        targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{a.port}" for a in apps], "labels": labels}]))
        rules = tmp / "alerts.yml"
        rules.write_text(yaml.safe_dump(shortened_rules(load_yaml(MONITORING / "alerts.yml"))))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                    "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                }
            ],
        }
        with PrometheusProcess(tmp / "prom", config) as prom:
            yield Deployment(apps, prom, db_url, free_key, pro_key, pro.id, doomed_key, doomed.id)
    finally:
        for app in apps:
            app.stop()
        redis_server.stop()


def _infer(app: AppServer, key: str, image: str | None = None) -> httpx.Response:
    body = {"image": image or scene_png_b64(), "task": "captioning"}
    return httpx.post(f"{app.url}/inference", json=body, headers={"X-API-Key": key}, timeout=60)


def _metric(app: AppServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{app.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).text
    total = 0.0
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_instance_is_discovered_and_scraped(deployment: Deployment) -> None:
    up = _wait("three targets up", lambda: len(deployment.prom.query(f'up{{job="{JOB}"}} == 1')) == 3 or None)
    assert up
    instances = {r["metric"]["instance"] for r in deployment.prom.query(f'up{{job="{JOB}"}}')}
    assert instances == {deployment.instance(a) for a in deployment.apps}


def test_the_rate_limit_holds_across_instances(deployment: Deployment) -> None:
    apps = deployment.apps
    # round robin, as a Service spreads one client's requests over the pods
    answers = [_infer(apps[i % 3], deployment.free_key) for i in range(2 * FREE_BURST)]
    statuses = [r.status_code for r in answers]
    # one bucket for the key: 6 in all, not 6 per instance (18)
    assert statuses == [200] * FREE_BURST + [429] * FREE_BURST, statuses
    refused = answers[FREE_BURST:]
    assert all(r.json()["error"]["code"] == "RATE_LIMITED" for r in refused)
    assert all(int(r.headers["Retry-After"]) >= 90 for r in refused)  # one token per 100 s
    assert all(_metric(app, "rate_limit_backend_errors_total") == 0 for app in apps)  # Redis decided
    assert all(_metric(app, "security_events_total", event_type="rate_limited") == 2 for app in apps)


def test_a_revocation_on_one_instance_reaches_all(deployment: Deployment) -> None:
    apps = deployment.apps
    assert [_infer(app, deployment.doomed_key).status_code for app in apps] == [200, 200, 200]
    # `kubectl exec <pod 0> -- mobile-mm keys revoke ID`: the first instance's configuration
    result = subprocess.run(
        [str(MOBILE_MM), "keys", "revoke", deployment.doomed_key_id],
        env=apps[0].env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    # bound: the very next request on every instance (no key cache to expire)
    answers = [_infer(app, deployment.doomed_key) for app in apps]
    assert [r.status_code for r in answers] == [401, 401, 401]
    assert {r.json()["error"]["code"] for r in answers} == {"REVOKED_API_KEY"}
    assert [_infer(app, deployment.pro_key).status_code for app in apps] == [200, 200, 200]


def _series_count(prom: PrometheusProcess, status: str) -> int:
    return len(prom.query(f'model_inference_requests_total{{job="{JOB}", status="{status}"}}'))


def test_the_error_rate_is_computed_over_all_instances(deployment: Deployment) -> None:
    apps, prom = deployment.apps, deployment.prom
    bad = "data:image/png;base64,bm90IGFuIGltYWdl"  # "not an image": 415, counted as an error
    # every instance's error series exists before the measured traffic (a counter born in a
    # burst is seen by rate() from its second sample only)
    for app in apps:
        assert _infer(app, deployment.pro_key, bad).status_code == 415
    _wait("error series of all three scraped", lambda: _series_count(prom, "error") == 3)
    _wait("success series of all three scraped", lambda: _series_count(prom, "success") == 3)
    # instance 0 answers errors only; 1 and 2 succeed: 6 errors in 24
    for _ in range(6):
        assert _infer(apps[0], deployment.pro_key, bad).status_code == 415
    for i in range(18):
        assert _infer(apps[1 + i % 2], deployment.pro_key).status_code == 200
    sent = sum(_metric(app, "model_inference_requests_total") for app in apps)
    _wait(
        "the traffic scraped",
        lambda: prom.query(f'sum(model_inference_requests_total{{job="{JOB}"}}) == {sent}'),
    )
    firing = _wait("HighErrorRate", lambda: prom.firing().get("HighErrorRate"), timeout_s=120)
    # one alert for the service, not one per instance; the 86 % of instance 0 alone would be critical
    assert len(firing) == 1 and "instance" not in firing[0], firing
    expr = next(
        r["expr"]
        for g in load_yaml(MONITORING / "alerts.yml")["groups"]
        for r in g["rules"]
        if r.get("alert") == "HighErrorRate"
    )
    (overall,) = prom.query(expr.rsplit(">", 1)[0])
    assert set(overall["metric"]) == {"job", "model_type"}
    assert 0.1 < float(overall["value"][1]) < 0.5
    per_instance = prom.query(
        f'sum by (instance) (rate(model_inference_requests_total{{job="{JOB}", status!="success"}}[5m]))'
        f' / sum by (instance) (rate(model_inference_requests_total{{job="{JOB}"}}[5m]))'
    )
    by_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in per_instance}
    assert by_instance[deployment.instance(apps[0])] > 0.5
    assert "ErrorRateCritical" not in prom.firing()


def _grafana_to_promql(expr: str) -> str:
    """What Grafana sends for a panel when every variable is "All"."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
    return re.sub(r"\$\{?(environment|model_type|instance)\}?", ".*", expr)


def test_dashboard_queries_work_with_several_instances(deployment: Deployment) -> None:
    """Every panel query runs against three instances of one job: a binary operation without
    on()/ignoring() would fail here with duplicate series, and each returns data unless NO_DATA_HERE
    says why not. Per-instance panels show all three."""
    prom = deployment.prom
    empty, per_instance = [], 0
    for expr in dashboard_queries():
        result = prom.query(_grafana_to_promql(expr))  # raises with Prometheus's error
        if not result:
            empty.append(expr)
        elif "instance" in expr and all("instance" in r["metric"] for r in result):
            per_instance += 1
            assert {r["metric"]["instance"] for r in result} >= {
                deployment.instance(a) for a in deployment.apps
            }, expr
    unexplained = [e for e in empty if not any(key in e for key in NO_DATA_HERE)]
    assert not unexplained, "dashboard queries without data:\n" + "\n".join(unexplained)
    assert per_instance >= 1


def test_the_keda_triggers_evaluate(deployment: Deployment) -> None:
    triggers = {t["name"]: t["metadata"] for t in by_kind(rendered(), "ScaledObject")["spec"]["triggers"]}
    for name, meta in triggers.items():
        (series,) = deployment.prom.query(meta["query"])  # one number for the whole deployment
        value = float(series["value"][1])
        assert value >= 0, name
    (rate,) = deployment.prom.query(triggers["request-rate"]["query"])
    assert float(rate["value"][1]) > 0  # the traffic of the tests above


def test_the_deploy_docs_queries_return_data(deployment: Deployment) -> None:
    """docs/deploy.md's "What to watch" PromQL, on three live instances."""
    queries = deploy_doc.promql_queries()
    results = {q: deployment.prom.query(q) for q in queries}
    assert all(results.values()), [q for q, r in results.items() if not r]
    per_pod = results[queries[0]]
    assert {r["metric"]["instance"] for r in per_pod} == {deployment.instance(a) for a in deployment.apps}
    (count,) = results['count(up{job="mobile-multimodal-llm"} == 1)']
    assert float(count["value"][1]) == 3
    (backend_errors,) = results[queries[2]]
    assert float(backend_errors["value"][1]) == 0  # Redis answered throughout


def test_service_down_fires_for_the_dead_instance_only(deployment: Deployment) -> None:
    apps, prom = deployment.apps, deployment.prom
    assert "ServiceDown" not in prom.firing()
    dead = apps[2]
    os.kill(dead.pid, 9)  # not a graceful stop: the pod is gone
    dead.stop()
    firing = _wait("ServiceDown", lambda: prom.firing().get("ServiceDown"), timeout_s=120)
    assert [alert["instance"] for alert in firing] == [deployment.instance(dead)]
    # the survivors still answer, and the service-wide expressions still evaluate over them
    assert [_infer(app, deployment.pro_key).status_code for app in apps[:2]] == [200, 200]
    assert {r["metric"]["instance"] for r in prom.query(f'up{{job="{JOB}"}} == 1')} == {
        deployment.instance(a) for a in apps[:2]
    }
