"""monitoring/alertmanager.yml: valid, routes each severity to the guide's receiver, keeps secrets out,
and works in the real Alertmanager binary.

The live tests start ``prometheus-alertmanager`` on 127.0.0.1 with a copy of our config whose
receivers point at local servers run by the test (PagerDuty, Slack and email are not reachable
from here): once with every receiver a webhook (routing and inhibition), once with our real
PagerDuty, Slack and email integrations and templates aimed at local endpoints.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.observability.stack import SEVERITY_RECEIVERS, StackError, send_test_alert

from .localstack import (
    MONITORING,
    REPO,
    AlertmanagerProcess,
    SMTPReceiver,
    WebhookReceiver,
    load_yaml,
    local_integrations_variant,
    missing_binaries,
    webhook_variant,
)

CONFIG = MONITORING / "alertmanager.yml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    missing = missing_binaries("amtool", AlertmanagerProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs them)")
    return dict(load_yaml(CONFIG))


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=600, check=False)


def test_check_config(config: dict[str, Any]) -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("severity", "receiver"), list(SEVERITY_RECEIVERS.items()))
def test_route_per_severity(config: dict[str, Any], severity: str | None, receiver: str) -> None:
    labels = ["alertname=HighInferenceLatency", *([f"severity={severity}"] if severity else [])]
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [receiver]


def test_route_test_detects_a_wrong_receiver(config: dict[str, Any]) -> None:
    result = _amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        "--verify.receivers=slack-warnings",
        "severity=critical",
    )
    assert result.returncode != 0


def test_guide_grouping_and_intervals(config: dict[str, Any]) -> None:
    route = config["route"]
    assert route["receiver"] == "web.hook"
    assert route["group_by"] == ["alertname"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("10s", "10s", "1h")
    kinds = {r["name"]: next(k for k in r if k.endswith("_configs")) for r in config["receivers"]}
    assert kinds == {
        "web.hook": "slack_configs",  # the catch-all: Slack and email, no webhook nobody runs
        "pagerduty-critical": "pagerduty_configs",
        "slack-warnings": "slack_configs",
        "email-info": "email_configs",
    }


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in _walk(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [item for i, v in enumerate(node) for item in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


def test_no_secret_in_the_config(config: dict[str, Any]) -> None:
    secret_keys = (
        "routing_key",
        "service_key",
        "api_url",
        "auth_password",
        "smtp_auth_password",
        "slack_api_url",
        "credentials",
        "password",
        "token",
    )
    for path, value in _walk(config):
        key = path.rsplit(".", 1)[-1]
        if key.endswith("_file"):
            assert str(value).startswith("/etc/alertmanager/secrets/"), path
        else:
            assert key not in secret_keys, f"{path} holds a secret inline"


def test_secrets_directory_is_ignored_by_git() -> None:
    for name in ("pagerduty_routing_key", "slack_webhook_url", "smtp_password"):
        result = subprocess.run(
            ["git", "check-ignore", "-q", f"monitoring/secrets/{name}"], cwd=REPO, check=False
        )
        assert result.returncode == 0, f"monitoring/secrets/{name} would be committed"
    result = subprocess.run(
        ["git", "check-ignore", "-q", "monitoring/secrets/README.md"], cwd=REPO, check=False
    )
    assert result.returncode == 1


def test_real_binary_loads_our_config_without_secrets(config: dict[str, Any], tmp_path: Path) -> None:
    """Secrets are read when a notification is sent: a fresh checkout's stack still starts."""
    with AlertmanagerProcess(tmp_path, config) as am:
        status = am.alerts()
        assert status == []


def _alert(name: str, severity: str | None, **labels: str) -> dict[str, Any]:
    all_labels = {"alertname": name, "service": "mobile-multimodal-llm", **labels}
    if severity:
        all_labels["severity"] = severity
    return {
        "labels": all_labels,
        "annotations": {
            "summary": f"{name} summary",
            "description": f"{name} text",
            "runbook_url": f"docs/runbooks/{name}.md",
        },
    }


@pytest.mark.slow
def test_each_severity_reaches_its_receiver(config: dict[str, Any], tmp_path: Path) -> None:
    with WebhookReceiver() as hook, AlertmanagerProcess(tmp_path, webhook_variant(config, hook.url)) as am:
        am.post_alerts(
            [
                _alert("ModelLoadingFailure", "critical", category="model_load"),
                _alert("HighErrorRate", "warning", category="errors"),
                _alert("NewModelDeployment", "info", category="deployment"),
                _alert("SomethingUnlabelled", None),
            ]
        )
        for alertname, receiver in [
            ("ModelLoadingFailure", "pagerduty-critical"),
            ("HighErrorRate", "slack-warnings"),
            ("NewModelDeployment", "email-info"),
            ("SomethingUnlabelled", "web.hook"),
        ]:
            note = hook.wait_for(lambda n, a=alertname: n["commonLabels"].get("alertname") == a)
            # Alertmanager regexp-quotes the receiver name in its payload ("web\\.hook").
            assert note["receiver"].replace("\\", "") == receiver
            assert note["status"] == "firing"
            assert note["groupLabels"] == {"alertname": alertname}  # the guide's group_by
        paths = {r["path"] for r in hook.received}
        assert paths == {"/pagerduty-critical", "/slack-warnings", "/email-info", "/web.hook"}


@pytest.mark.slow
def test_critical_inhibits_warning_of_the_same_kind(config: dict[str, Any], tmp_path: Path) -> None:
    with WebhookReceiver() as hook, AlertmanagerProcess(tmp_path, webhook_variant(config, hook.url)) as am:
        am.post_alerts(
            [
                _alert("InferenceLatencyCritical", "critical", category="latency", task="ocr"),
                _alert("HighInferenceLatency", "warning", category="latency", task="ocr"),
                _alert("HighInferenceLatency", "warning", category="latency", task="vqa"),
            ]
        )
        hook.wait_for(lambda n: n["receiver"] == "pagerduty-critical")
        warning = hook.wait_for(lambda n: n["receiver"] == "slack-warnings")
        assert [a["labels"]["task"] for a in warning["alerts"]] == ["vqa"]
        inhibited = am.alerts('alertname="HighInferenceLatency"', 'task="ocr"')
        assert inhibited[0]["status"]["inhibitedBy"], inhibited


@pytest.mark.slow
def test_real_integrations_and_templates(config: dict[str, Any], tmp_path: Path) -> None:
    """Our PagerDuty, Slack and email receivers, with their templates, deliver to local endpoints."""
    with WebhookReceiver() as http, SMTPReceiver() as smtp:
        variant = local_integrations_variant(config, tmp_path, http.url, smtp.address)
        with AlertmanagerProcess(tmp_path / "am", variant) as am:
            am.post_alerts(
                [
                    _alert("ModelTampering", "critical", category="integrity", instance="app:8080"),
                    _alert("LowDiskSpace", "warning", category="disk", instance="app:8080"),
                    _alert("NewModelDeployment", "info", category="deployment", instance="app:8080"),
                ]
            )
            pagerduty = http.wait_for(lambda b: b.get("routing_key") == "test-routing-key")
            assert pagerduty["event_action"] == "trigger"
            assert pagerduty["payload"]["summary"] == "ModelTampering: ModelTampering summary"
            assert pagerduty["payload"]["severity"] == "critical"
            assert pagerduty["payload"]["custom_details"]["runbook"] == "docs/runbooks/ModelTampering.md"
            slack = http.wait_for(lambda b: "attachments" in b)
            attachment = slack["attachments"][0]
            assert slack["channel"] == "#mobile-mm-alerts"
            assert attachment["title"] == "[FIRING:1] LowDiskSpace"
            assert "LowDiskSpace summary" in attachment["text"]
            assert "Runbook: docs/runbooks/LowDiskSpace.md" in attachment["text"]
            email = smtp.wait_for_message()
            assert "To: mobile-mm-ops@example.org" in email
            assert "[mobile-multimodal-llm info] NewModelDeployment: NewModelDeployment summary" in email
        paths = {r["path"] for r in http.received}
        assert paths == {"/pagerduty", "/slack"}


@pytest.mark.slow
@pytest.mark.parametrize("severity", ["critical", "warning", "info"])
def test_send_test_alert(config: dict[str, Any], tmp_path: Path, severity: str) -> None:
    with WebhookReceiver() as hook, AlertmanagerProcess(tmp_path, webhook_variant(config, hook.url)) as am:
        receivers = send_test_alert(am.url, severity=severity, duration_s=60)
        assert receivers == [SEVERITY_RECEIVERS[severity]]
        note = hook.wait_for(lambda n: n["commonLabels"].get("alertname") == "MonitoringTestAlert")
        assert note["receiver"] == SEVERITY_RECEIVERS[severity]
        assert note["commonAnnotations"]["runbook_url"] == "docs/runbooks/MonitoringTestAlert.md"
        assert (REPO / note["commonAnnotations"]["runbook_url"]).is_file()


def test_cli_test_alert(config: dict[str, Any], tmp_path: Path) -> None:
    with WebhookReceiver() as hook, AlertmanagerProcess(tmp_path, webhook_variant(config, hook.url)) as am:
        result = CliRunner().invoke(
            app, ["monitoring", "test-alert", "--alertmanager-url", am.url, "--severity", "warning"]
        )
    assert result.exit_code == 0, result.output
    assert "routed to: slack-warnings" in result.output


def test_test_alert_without_alertmanager() -> None:
    with socket.socket() as bound:  # bound and never listening: nothing can answer there meanwhile
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        with pytest.raises(StackError, match="cannot reach Alertmanager"):
            send_test_alert(url)
        result = CliRunner().invoke(app, ["monitoring", "test-alert", "--alertmanager-url", url])
    assert result.exit_code == 1
    assert "cannot reach Alertmanager" in result.output
