"""docs/monitoring.md describes exactly what ships: its alerts, metrics, LogQL, ports and commands."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mobile_multimodal.cli import app

from .conftest import parse_expressions
from .localstack import MONITORING, REPO
from .test_alert_rules import RULES, exposed_names
from .test_dashboards import _process_collector_names

DOC = (REPO / "docs" / "monitoring.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def test_every_alert_is_documented_with_its_runbook() -> None:
    for alert in RULES:
        assert f"[`{alert}`](runbooks/{alert}.md)" in DOC, alert


def test_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", DOC):
        assert (REPO / "docs" / target).exists(), target


def test_logql_is_the_guides_and_parses(grafana_validator: Path) -> None:
    queries = [line for block in _blocks("logql") for line in block.splitlines() if line.startswith("{")]
    assert queries == [
        '{service="mobile-multimodal-llm"} |= "ERROR"',
        '{service="mobile-multimodal-llm"} | json | duration_ms > 100',
        '{service="mobile-multimodal-llm"} | json | operation="mobile_export"',
    ]
    for parsed in parse_expressions(grafana_validator, "--logql", queries):
        assert parsed["error"] is None, parsed


def test_documented_metrics_exist() -> None:
    known = exposed_names() | _process_collector_names()
    for block in _blocks("prometheus"):
        for line in block.splitlines():
            if line and not line.startswith("#"):
                name = re.match(r"[a-z_]+", line)
                assert name and name.group(0) in known, line
    for name in re.findall(r"`(process_[a-z_]+)`", DOC):
        assert name in known, name


def test_component_ports_match_compose() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    # "${BIND_ADDRESS:-127.0.0.1}:8080:8080": the host port is the second field from the end;
    # node-exporter's 9100 is exposed on the compose network, not published.
    published = {
        int(str(p).split(":")[-2]) for svc in compose["services"].values() for p in svc.get("ports", [])
    }
    published |= {int(p) for svc in compose["services"].values() for p in svc.get("expose", [])}
    table = DOC.split("### Component responsibilities")[1].split("##")[0]
    documented = {int(p) for p in re.findall(r"\| (\d{4,5})(?: |\b)", table)}
    documented |= {int(p) for p in re.findall(r"(\d{4,5}) \(", table)}
    assert documented <= published, documented - published
    assert {8080, 9090, 9093, 3000, 16686, 3100, 9100} <= documented


def test_mobile_mm_commands_exist() -> None:
    commands = set(re.findall(r"mobile-mm ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", DOC))
    runner = CliRunner()
    for command in sorted(commands):
        words = command.split()
        result = runner.invoke(app, [*words, "--help"])
        if result.exit_code != 0 and len(words) == 2:  # "keys create" vs "eval --json"
            result = runner.invoke(app, [words[0], "--help"])
        assert result.exit_code == 0, f"mobile-mm {command}: {result.output}"


@pytest.mark.parametrize(
    "line",
    [
        line.split("#")[0].strip()
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.startswith(("promtool check", "amtool "))
    ],
)
def test_documented_tool_commands_work(line: str) -> None:
    result = subprocess.run(
        shlex.split(line), cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if "routes test" in line:
        assert result.stdout.split() == ["pagerduty-critical"]


def test_guide_configuration_files_exist() -> None:
    for path in set(re.findall(r"`((?:monitoring|docs)/[\w./-]+)`", DOC)):
        assert (REPO / path).exists(), path
    assert (MONITORING / "observability.yml").exists()
