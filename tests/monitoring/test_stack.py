"""`mobile-mm monitoring check` and the functions behind it (observability/stack.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.observability.stack import (
    CheckResult,
    StackError,
    check_routes,
    check_runbooks,
    find_root,
    format_result,
    run_checks,
)

from .localstack import REPO


def _copy_stack(tmp_path: Path) -> Path:
    """The files the checks read, copied so a test can break one."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "monitoring", root / "monitoring", ignore=shutil.ignore_patterns("node_modules"))
    shutil.copytree(REPO / "docs" / "runbooks", root / "docs" / "runbooks")
    return root


def test_find_root(tmp_path: Path) -> None:
    assert find_root(REPO / "monitoring" / "grafana") == REPO
    with pytest.raises(StackError, match=r"monitoring/prometheus\.yml"):
        find_root(tmp_path)


def test_runbook_check_catches_a_missing_runbook(tmp_path: Path) -> None:
    root = _copy_stack(tmp_path)
    assert check_runbooks(root).ok
    (root / "docs" / "runbooks" / "BackupStale.md").unlink()
    result = check_runbooks(root)
    assert not result.ok
    assert "BackupStale: runbook docs/runbooks/BackupStale.md does not exist" in result.output


def test_runbook_check_catches_missing_metadata(tmp_path: Path) -> None:
    root = _copy_stack(tmp_path)
    path = root / "monitoring" / "alerts.yml"
    doc = yaml.safe_load(path.read_text())
    rule = doc["groups"][0]["rules"][0]
    del rule["annotations"]["summary"]
    rule["labels"]["severity"] = "page"
    path.write_text(yaml.safe_dump(doc))
    output = check_runbooks(root).output
    assert f"{rule['alert']}: no summary annotation" in output
    assert f"{rule['alert']}: severity must be critical, warning or info" in output


def test_route_check_catches_a_rerouted_severity(tmp_path: Path) -> None:
    root = _copy_stack(tmp_path)
    assert all(r.ok for r in check_routes(root))
    path = root / "monitoring" / "alertmanager.yml"
    config = yaml.safe_load(path.read_text())
    config["route"]["routes"][1]["receiver"] = "email-info"  # warnings to email
    path.write_text(yaml.safe_dump(config))
    failed = [r.name for r in check_routes(root) if not r.ok]
    assert failed == ["route severity=warning -> slack-warnings"]


def test_format_result() -> None:
    assert format_result(CheckResult("x", ok=True, output="fine")) == "ok    x"
    assert format_result(CheckResult("x", ok=False, output="bad\nworse")) == "FAIL  x\n      bad\n      worse"
    assert format_result(CheckResult("x", ok=False, skipped=True, output="no tool")).startswith("SKIP  x")


@pytest.mark.slow
def test_all_checks_pass_on_the_repository() -> None:
    results = run_checks(REPO)
    names = [r.name for r in results]
    assert {
        "prometheus.yml",
        "alerts.yml",
        "alert unit tests",
        "alertmanager.yml",
        "docker-compose.yml",
        "Dockerfile (hadolint)",
        "dashboards match Grafana's schema",
        "alerts have runbooks",
    } <= set(names)
    problems = [format_result(r) for r in results if not r.ok]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_cli_check(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["monitoring", "check", "--root", str(REPO), "--strict"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("passed, 0 failed, 0 skipped")
    broken = _copy_stack(tmp_path)
    shutil.copy(REPO / "docker-compose.yml", broken / "docker-compose.yml")
    shutil.copy(REPO / "Dockerfile", broken / "Dockerfile")
    (broken / "monitoring" / "prometheus.yml").write_text("global: {scrape_interval: soon}\n")
    result = CliRunner().invoke(app, ["monitoring", "check", "--root", str(broken)])
    assert result.exit_code == 1
    assert "FAIL  prometheus.yml" in result.output
