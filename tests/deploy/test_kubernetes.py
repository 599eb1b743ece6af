"""deploy/kubernetes: every object valid against the Kubernetes schemas (offline, kubernetes-validate's
bundled ones), the custom resources checked for the fields we rely on, and all of them consistent
with each other, the app's settings, the Dockerfile, monitoring/alerts.yml and the benchmarks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.observability.prometheus_rule import render_prometheus_rule
from mobile_multimodal.settings import Settings

from .manifests import KUSTOMIZE_DIR, REPO, by_kind, raw_objects, rendered

# The Kubernetes releases we claim: oldest and newest kubernetes-validate bundles that we test.
K8S_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")
CUSTOM = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
NAME = "mobile-multimodal-llm"
PRESTOP_SLEEP_S = 5


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return rendered()


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(objects)["env"]}


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(by_kind(objects, "Deployment")["spec"]["template"]["metadata"]["labels"])


def test_every_file_is_in_the_kustomization() -> None:
    listed = set(raw_objects())
    on_disk = {p.name for p in KUSTOMIZE_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schemas(objects: list[dict[str, Any]], version: str) -> None:
    kinds = set()
    for obj in objects:
        if obj["kind"] in CUSTOM:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # no schema: checked below
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError with the path
        kinds.add(obj["kind"])
    assert kinds == {"Namespace", "Secret", "Deployment", "PodDisruptionBudget", "Service", "NetworkPolicy"}


def test_the_validator_catches_a_wrong_field(objects: list[dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(by_kind(objects, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/alive"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_namespace_and_labels_are_rendered(objects: list[dict[str, Any]]) -> None:
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {
        by_kind(objects, "Namespace")["metadata"]["name"]
    }
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAME for o in objects)
    assert _container(objects)["image"] == f"{NAME}:0.1.0"


# --- the Deployment -------------------------------------------------------------------------
def test_probes_hit_alive_and_ready(objects: list[dict[str, Any]]) -> None:
    container = _container(objects)
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": Settings.model_fields["port"].default}
    assert container["livenessProbe"]["httpGet"] == {"path": "/alive", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/alive", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    # the startup probe allows the 300 s a model load may take on a loaded machine
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


# The operator's guide's health-check table: endpoint -> (frequency, timeout) in seconds.
GUIDE_HEALTH_CHECKS = {"/alive": (10, 5), "/ready": (15, 10), "/health": (30, 15), "/model/health": (60, 30)}


def _documented_health_checks() -> dict[str, tuple[int, int]]:
    """docs/monitoring.md's "Health endpoints" table: endpoint -> (frequency, timeout) seconds."""
    rows = re.findall(
        r"^\| `(/[a-z/]+)`[^|]*\|[^|]*\| (\d+)s \| (\d+)s \|$",
        (REPO / "docs" / "monitoring.md").read_text(),
        re.MULTILINE,
    )
    return {path: (int(every), int(within)) for path, every, within in rows}


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_every_probe_uses_the_guides_frequency_and_timeout(objects: list[dict[str, Any]]) -> None:
    assert _documented_health_checks() == GUIDE_HEALTH_CHECKS
    container = _container(objects)
    for probe in ("livenessProbe", "readinessProbe"):
        spec = container[probe]
        every, within = GUIDE_HEALTH_CHECKS[spec["httpGet"]["path"]]
        assert (spec["periodSeconds"], spec["timeoutSeconds"]) == (every, within), probe
    startup = container["startupProbe"]  # its own period (start detection), the endpoint's timeout
    assert startup["timeoutSeconds"] == GUIDE_HEALTH_CHECKS[startup["httpGet"]["path"]][1]
    # compose's healthchecks and the image's HEALTHCHECK probe /alive the same way
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    app_checks = {
        name: service["healthcheck"]
        for name, service in compose["services"].items()
        if "healthcheck" in service and "/alive" in " ".join(service["healthcheck"]["test"])
    }
    assert app_checks, "no compose service probes /alive"
    for name, check in app_checks.items():
        timing = (_seconds(check["interval"]), _seconds(check["timeout"]))
        assert timing == GUIDE_HEALTH_CHECKS["/alive"], name
        assert "timeout=5)" in " ".join(check["test"])  # the client gives up when the check does
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"HEALTHCHECK --interval=10s --timeout=5s .*\n.*/alive", dockerfile)


def test_resources_are_requested_and_limited(objects: list[dict[str, Any]]) -> None:
    resources = _container(objects)["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, kind
    # torch's intra-op threads are set explicitly: os.cpu_count() in a pod is the node's cores
    assert int(_env(objects)["MOBILE_MM_TORCH_THREADS"]) == int(resources["limits"]["cpu"]) - 1


def test_termination_grace_covers_the_drain(objects: list[dict[str, Any]]) -> None:
    spec = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    drain = float(_env(objects)["MOBILE_MM_SHUTDOWN_GRACE_S"])
    assert drain == Settings.model_fields["shutdown_grace_s"].default
    assert _container(objects)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SLEEP_S)]
    # the Service stops routing, then the app drains, then it has time to exit (compose's rule)
    assert spec["terminationGracePeriodSeconds"] >= PRESTOP_SLEEP_S + drain + 10


def test_the_pod_runs_as_the_images_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.M)
    pod = by_kind(rendered(), "Deployment")["spec"]["template"]["spec"]
    assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == user
    # every path the app writes is a volume (the root filesystem is read-only)
    mounts = {m["mountPath"] for m in _container(rendered())["volumeMounts"]}
    assert {"/app/data", "/app/logs", "/app/profiles", "/tmp"} <= mounts
    assert set(re.findall(r"MOBILE_MM_\w+_DIR=(/app/\w+)", dockerfile)) <= mounts


def test_env_is_what_the_app_reads_and_refuses_sqlite(objects: list[dict[str, Any]]) -> None:
    env = _env(objects)
    for name in env:
        assert name.removeprefix("MOBILE_MM_").lower() in Settings.model_fields, name
    secret_keys = set(by_kind(objects, "Secret")["stringData"])
    refs = [v["secretKeyRef"] for v in env.values() if isinstance(v, dict)]
    assert {r["key"] for r in refs} <= secret_keys and {r["name"] for r in refs} == {NAME}
    mounted = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["secret"]
    assert {i["key"] for i in mounted["items"]} <= secret_keys
    plain = {k.removeprefix("MOBILE_MM_").lower(): v for k, v in env.items() if isinstance(v, str)}
    plain.pop("metrics_token_file"), plain.pop("manifest_signing_key_file")  # mounted at run time
    secret = by_kind(objects, "Secret")["stringData"]
    settings = Settings(**plain, database_url=secret["database-url"], redis_url=secret["redis-url"])
    assert settings.replicas == by_kind(objects, "ScaledObject")["spec"]["maxReplicaCount"]
    with pytest.raises(ValueError, match="SQLite"):
        Settings(**plain)  # the same pods without the shared database refuse to start


def test_service_pdb_and_networkpolicy_select_the_pods(objects: list[dict[str, Any]]) -> None:
    pods = _pod_labels(objects)
    service = by_kind(objects, "Service")
    assert service["metadata"]["name"] == NAME  # the scrape job's name, which the alerts select
    assert service["spec"]["selector"].items() <= pods.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert by_kind(objects, "ScaledObject")["spec"]["minReplicaCount"] - pdb["spec"]["maxUnavailable"] >= 1
    policy = by_kind(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pods.items()
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8080]
    egress = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 5432, 6379} <= egress


# --- custom resources: the fields we rely on --------------------------------------------------
def test_service_monitor_scrapes_the_service_with_the_token(objects: list[dict[str, Any]]) -> None:
    monitor = by_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec, service = monitor["spec"], by_kind(objects, "Service")
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # job label = the Service's label value = the job monitoring/alerts.yml selects
    assert service["metadata"]["labels"][spec["jobLabel"]] == NAME
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert credentials["name"] == NAME and credentials["key"] in by_kind(objects, "Secret")["stringData"]
    assert {"targetLabel": "environment", "replacement": "production", "action": "replace"} in endpoint[
        "relabelings"
    ]


def test_prometheus_rule_is_the_generated_alerts_yml(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    committed = (KUSTOMIZE_DIR / "prometheusrule.yaml").read_text()
    assert committed == render_prometheus_rule(REPO / "monitoring" / "alerts.yml")
    rule = by_kind(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        rule["spec"]["groups"] == yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text())["groups"]
    )
    assert (
        rule["metadata"]["labels"]["release"]
        == by_kind(objects, "ServiceMonitor")["metadata"]["labels"]["release"]
    )
    # the command, as docs/deploy.md shows it
    runner = CliRunner()
    out = tmp_path / "rule.yaml"
    assert runner.invoke(app, ["monitoring", "k8s-rules", "--out", str(out)]).exit_code == 0
    assert out.read_text() == committed
    check = ["monitoring", "k8s-rules", "--out", str(KUSTOMIZE_DIR / "prometheusrule.yaml"), "--check"]
    assert runner.invoke(app, check).exit_code == 0
    out.write_text(committed.replace("for: 1m", "for: 2m", 1))
    stale = runner.invoke(app, ["monitoring", "k8s-rules", "--out", str(out), "--check"])
    assert stale.exit_code == 1 and "differs" in stale.output
    assert runner.invoke(app, ["monitoring", "k8s-rules"]).output == committed


def test_k8s_rules_refuses_a_file_that_is_not_a_rule_file(tmp_path: Path) -> None:
    bad = tmp_path / "alerts.yml"
    bad.write_text("rules: []\n")
    result = CliRunner().invoke(app, ["monitoring", "k8s-rules", "--alerts", str(bad)])
    assert result.exit_code == 1 and "no groups" in result.output


def test_scaled_object_scales_the_deployment_on_our_load(objects: list[dict[str, Any]]) -> None:
    scaled = by_kind(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == by_kind(objects, "Deployment")["metadata"]["name"]
    assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"queue-depth", "request-rate"}
    namespace = by_kind(objects, "Namespace")["metadata"]["name"]
    for trigger in triggers.values():
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert float(meta["threshold"]) > 0
        assert f'job="{NAME}"' in meta["query"] and f'namespace="{namespace}"' in meta["query"]
    assert "inference_queue_depth" in triggers["queue-depth"]["metadata"]["query"]
    assert "model_inference_requests_total" in triggers["request-rate"]["metadata"]["query"]


def test_request_rate_threshold_is_below_the_measured_capacity(objects: list[dict[str, Any]]) -> None:
    """The per-pod target stays under what one pod served within the 100 ms p95 target."""
    from tests.deploy.capacity import capacity_rows

    best = max(row.rps for row in capacity_rows() if row.p95_ms <= 100)
    threshold = float(by_kind(objects, "ScaledObject")["spec"]["triggers"][1]["metadata"]["threshold"])
    assert threshold <= 0.8 * best


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_trigger_queries_are_valid_promql(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """promtool parses each query as a rule expression (the live test evaluates them)."""
    triggers = by_kind(objects, "ScaledObject")["spec"]["triggers"]
    rules = {
        "groups": [
            {
                "name": "keda",
                "rules": [
                    {"record": f"keda:{t['name'].replace('-', '_')}", "expr": t["metadata"]["query"]}
                    for t in triggers
                ],
            }
        ]
    }
    path = tmp_path / "keda.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_monitoring_check_reports_a_stale_prometheus_rule(tmp_path: Path) -> None:
    from mobile_multimodal.observability.stack import check_prometheus_rule

    (tmp_path / "monitoring").mkdir()
    (tmp_path / "deploy" / "kubernetes").mkdir(parents=True)
    alerts = (REPO / "monitoring" / "alerts.yml").read_text()
    (tmp_path / "monitoring" / "alerts.yml").write_text(alerts)
    rule = tmp_path / "deploy" / "kubernetes" / "prometheusrule.yaml"
    rule.write_text(render_prometheus_rule(tmp_path / "monitoring" / "alerts.yml"))
    assert check_prometheus_rule(tmp_path).ok
    (tmp_path / "monitoring" / "alerts.yml").write_text(alerts.replace("for: 1m", "for: 3m", 1))
    stale = check_prometheus_rule(tmp_path)
    assert (
        not stale.ok
        and "mobile-mm monitoring k8s-rules --out deploy/kubernetes/prometheusrule.yaml" in stale.output
    )
    rule.unlink()
    assert check_prometheus_rule(tmp_path).skipped
