"""The weekly notification test reaches every receiver, in the runbook's order (issue 21).

The runbook sends critical, then warning, then info. The critical/warning inhibit rule matches on
``category`` (and target labels the test alert lacks), so without an exception the critical test
alert would inhibit the warning one and Slack would never be called while the command printed
"routed to: slack-warnings". These tests run the real Alertmanager with our inhibit rules and
check both the notifications and what ``mobile-mm monitoring test-alert`` prints.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.observability.stack import SEVERITY_RECEIVERS, send_test_alert_outcome

from .localstack import (
    MONITORING,
    AlertmanagerProcess,
    SMTPReceiver,
    WebhookReceiver,
    http_json,
    load_yaml,
    local_integrations_variant,
    missing_binaries,
    webhook_variant,
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    missing = missing_binaries(AlertmanagerProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs them)")
    return dict(load_yaml(MONITORING / "alertmanager.yml"))


def test_runbook_order_notifies_every_receiver(config: dict[str, Any], tmp_path: Path) -> None:
    with WebhookReceiver() as hook, AlertmanagerProcess(tmp_path, webhook_variant(config, hook.url)) as am:
        runner = CliRunner()
        for severity in ("critical", "warning", "info"):
            result = runner.invoke(
                app, ["monitoring", "test-alert", "--alertmanager-url", am.url, "--severity", severity]
            )
            assert result.exit_code == 0, result.output
            assert f"routed to: {SEVERITY_RECEIVERS[severity]} (state: active, notifying)" in result.output
        for severity in ("critical", "warning", "info"):
            note = hook.wait_for(
                lambda n, s=severity: (
                    n["commonLabels"].get("alertname") == "MonitoringTestAlert"
                    and n["commonLabels"].get("severity") == s
                )
            )
            assert note["receiver"] == SEVERITY_RECEIVERS[severity]


def test_a_suppressed_test_alert_is_reported_not_claimed(config: dict[str, Any], tmp_path: Path) -> None:
    with AlertmanagerProcess(tmp_path, webhook_variant(config, "http://127.0.0.1:9/unused")) as am:
        now = dt.datetime.now(dt.UTC)
        silence = {
            "matchers": [{"name": "alertname", "value": "MonitoringTestAlert", "isRegex": False}],
            "startsAt": now.isoformat(),
            "endsAt": (now + dt.timedelta(hours=1)).isoformat(),
            "createdBy": "test",
            "comment": "maintenance",
        }
        silence_id = http_json(f"{am.url}/api/v2/silences", silence)["silenceID"]
        outcome = send_test_alert_outcome(am.url, severity="warning", duration_s=60)
        assert outcome.receivers == ["slack-warnings"]
        assert (outcome.state, outcome.silenced_by, outcome.notifies) == ("suppressed", [silence_id], False)
        result = CliRunner().invoke(
            app, ["monitoring", "test-alert", "--alertmanager-url", am.url, "--severity", "warning"]
        )
    assert result.exit_code == 1
    assert f"holds it suppressed (silenced by {silence_id}): no notification is sent" in result.output


def test_runbook_links_use_the_configured_base_url(config: dict[str, Any], tmp_path: Path) -> None:
    """runbook_url is repository-relative; Prometheus's external label runbook_base_url (set in
    monitoring/prometheus.yml) makes the PagerDuty and Slack messages carry an openable link."""
    prometheus = load_yaml(MONITORING / "prometheus.yml")
    assert "external_labels" not in prometheus["global"]  # shipped unset: messages carry the path
    assert "runbook_base_url" in (MONITORING / "prometheus.yml").read_text()  # documented in place
    base = "https://docs.example.org/mobile-mm/"
    labels = {"severity": "warning", "category": "disk", "runbook_base_url": base}
    alerts = [
        {
            "labels": {"alertname": name, **labels, "severity": severity},
            "annotations": {"summary": "s", "description": "d", "runbook_url": f"docs/runbooks/{name}.md"},
        }
        for name, severity in (("LowDiskSpace", "warning"), ("DiskUsageCritical", "critical"))
    ]
    alerts[1]["labels"]["category"] = "disk-critical"  # not inhibiting the warning
    with WebhookReceiver() as http, SMTPReceiver() as smtp:
        variant = local_integrations_variant(config, tmp_path, http.url, smtp.address)
        with AlertmanagerProcess(tmp_path / "am", variant) as am:
            am.post_alerts(alerts)
            slack = http.wait_for(lambda b: "attachments" in b)
            assert f"Runbook: {base}docs/runbooks/LowDiskSpace.md" in slack["attachments"][0]["text"]
            pagerduty = http.wait_for(lambda b: b.get("routing_key") == "test-routing-key")
            assert (
                pagerduty["payload"]["custom_details"]["runbook"]
                == f"{base}docs/runbooks/DiskUsageCritical.md"
            )
