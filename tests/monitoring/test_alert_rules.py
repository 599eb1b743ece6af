"""monitoring/alerts.yml: valid for promtool, unit-tested by alerts.test.yml, one runbook per alert.

``promtool test rules`` runs every case of alerts.test.yml against the real rule engine; the
checks here make sure that file keeps covering every alert both ways (fires / stays silent),
that every alert carries what the receivers and runbooks need, and that the guide's alerts and
thresholds are all there.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mobile_multimodal.observability import metrics

from .conftest import parse_expressions
from .localstack import MONITORING, REPO

ALERTS = MONITORING / "alerts.yml"
TESTS = MONITORING / "alerts.test.yml"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


RULES = {rule["alert"]: rule for rule in _rules()}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (scripts/install_system_deps.sh installs it)")
    # the bound is for a hang: promtool test rules is CPU-bound and takes minutes on a loaded machine
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=900, check=False)


def test_rules_file_is_valid() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


@pytest.mark.slow
def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation must make `promtool test rules` fail (the suite is not vacuous)."""
    doc = yaml.safe_load(TESTS.read_text())
    doc["rule_files"] = [str(ALERTS)]
    doc["tests"] = [g for g in doc["tests"] if g["name"] == "service down"]
    case = next(t for t in doc["tests"][0]["alert_rule_test"] if t["exp_alerts"])
    case["exp_alerts"] = []
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(doc))
    result = _promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "ServiceDown" in result.stdout + result.stderr


def _cases() -> list[dict[str, Any]]:
    doc = yaml.safe_load(TESTS.read_text())
    return [case for group in doc["tests"] for case in group.get("alert_rule_test", [])]


@pytest.mark.parametrize("alert", sorted(RULES))
def test_every_alert_is_tested_firing_and_silent(alert: str) -> None:
    cases = [c for c in _cases() if c["alertname"] == alert]
    assert any(c.get("exp_alerts") for c in cases), f"{alert}: no case where it fires"
    assert any(not c.get("exp_alerts") for c in cases), f"{alert}: no case where it stays silent"


def test_tests_name_only_existing_alerts() -> None:
    assert {c["alertname"] for c in _cases()} <= set(RULES)


@pytest.mark.parametrize("alert", sorted(RULES))
def test_alert_metadata_and_runbook(alert: str) -> None:
    rule = RULES[alert]
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["labels"]["service"] == "mobile-multimodal-llm"
    assert rule["labels"]["category"]
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key), f"{alert}: missing {key}"
    assert annotations["runbook_url"] == f"docs/runbooks/{alert}.md"
    runbook = REPO / annotations["runbook_url"]
    assert runbook.is_file(), f"{alert}: {runbook} does not exist"
    text = runbook.read_text()
    assert text.startswith(f"# {alert}\n")
    assert rule["labels"]["severity"] in text


# The guide's alert list (and the Performance Monitoring thresholds) -> (alert, severity, threshold
# as it appears in the expression).
GUIDE = [
    ("ServiceDown", "critical", 'up{job="mobile-multimodal-llm"} == 0'),
    ("InferenceLatencyCritical", "critical", "> 1"),
    ("ErrorRateCritical", "critical", "> 0.5"),
    ("GPUOutOfMemory", "critical", "> 0.99"),
    ("ModelLoadingFailure", "critical", "increase(model_load_failures_total[5m]) > 0"),
    ("HighInferenceLatency", "warning", "> 0.1"),
    ("HighErrorRate", "warning", "> 0.1"),
    ("HighMemoryUsage", "warning", "system_memory_usage_percent > 80"),
    ("LowDiskSpace", "warning", "disk_free_percent < 20"),
    ("QuantizationAccuracyLoss", "warning", "quantization_accuracy_loss > 0.05"),
    ("NewModelDeployment", "info", "model_info"),
    ("ConfigurationChange", "info", "config_changes_total"),
    ("PerformanceDegradationTrend", "info", "offset 1d"),
    ("CapacityPlanningDiskFull", "info", "predict_linear"),
    ("SlowInference", "warning", "> 0.5"),
    ("SlowModelLoading", "warning", "model_load_duration_seconds > 30"),
    ("SlowMobileExport", "warning", 'mobile_export_duration_seconds_bucket{le=~"300'),
    ("HighCPUUsage", "warning", "system_cpu_usage_percent > 90"),
    ("MemoryUsageCritical", "critical", "system_memory_usage_percent > 95"),
    ("GPUMemoryHigh", "warning", "> 0.95"),
    ("DiskUsageCritical", "critical", "disk_usage_percent > 90"),
    ("MobileExportFailures", "warning", "mobile_export_failures_total"),
    ("AuthenticationFailures", "warning", "auth_failures_total"),
    ("UnauthorizedAccess", "warning", 'event_type="unauthorized"'),
    ("AnomalousRequests", "warning", 'event_type="anomalous_request"'),
    ("ModelTampering", "critical", "model_integrity_ok"),
    ("BackupStale", "warning", "backup_last_success_timestamp_seconds > 26 * 3600"),
]


@pytest.mark.parametrize(("alert", "severity", "fragment"), GUIDE)
def test_guide_alerts_present(alert: str, severity: str, fragment: str) -> None:
    rule = RULES[alert]
    assert rule["labels"]["severity"] == severity
    assert fragment in " ".join(rule["expr"].split())


def test_latency_uses_valid_histogram_quantile() -> None:
    """The guide's `histogram_quantile(0.95, model_inference_duration_seconds)` is invalid PromQL."""
    for name in ("HighInferenceLatency", "SlowInference", "InferenceLatencyCritical"):
        expr = " ".join(RULES[name]["expr"].split())
        assert "rate(model_inference_duration_seconds_bucket[5m])" in expr
        assert "sum by (le," in expr


def exposed_names() -> set[str]:
    """Every series name metrics.py can expose: counters with ``_total``, histograms' three parts."""
    names = set()
    for collector in vars(metrics).values():
        if not hasattr(collector, "describe") or not hasattr(collector, "_name"):
            continue
        for family in collector.describe():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}_{part}" for part in ("bucket", "count", "sum"))
            elif family.type == "info":
                names.add(f"{family.name}_info")
            else:
                names.add(family.name)
    return names


def test_alerts_use_only_exposed_metric_names(grafana_validator: Path) -> None:
    exprs = [rule["expr"] for rule in RULES.values()]
    known = exposed_names() | {"up"}
    for alert, parsed in zip(RULES, parse_expressions(grafana_validator, "--promql", exprs), strict=True):
        assert parsed["error"] is None, (alert, parsed)
        assert parsed["metrics"], alert
        unknown = set(parsed["metrics"]) - known
        assert not unknown, f"{alert}: unknown metric(s) {sorted(unknown)}"
