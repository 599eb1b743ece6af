"""docs/deploy.md is code: each command runs here or is checked with the reason it cannot run, its
numbers come from the benchmark and the manifests, and its PromQL parses (the multi-instance test
evaluates it against three live instances)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.settings import Settings

from . import deploy_doc
from .capacity import capacity_rows, render_table, results
from .manifests import REPO, by_kind, rendered

MOBILE_MM = Path(sys.executable).with_name("mobile-mm")
# Commands this machine cannot run, why, and what is checked instead.
NOT_RUN_HERE = {
    "make run": "serves until stopped; `make -n run` shows it runs `mobile-mm serve` on 8080",
    "mobile-mm serve": "serves until stopped; parsed by the real CLI here, and "
    "tests/serving/test_server_process.py serves with --workers 2",
    "docker-compose": "no Docker engine here; the profile and the compose file are checked",
    "kubectl": "no cluster here; the kustomization is rendered and every object validated "
    "(tests/deploy/test_kubernetes.py)",
}
RUN_HERE = ("mobile-mm monitoring k8s-rules", "mobile-mm train")


def test_every_command_is_run_or_checked() -> None:
    commands = deploy_doc.bash_commands()
    assert len(commands) == 6
    for command in commands:
        assert command.startswith(RUN_HERE) or command.startswith(tuple(NOT_RUN_HERE)), command


def test_make_run_serves_the_bundled_model_on_8080() -> None:
    assert "make run" in deploy_doc.bash_commands()
    result = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "mobile-mm serve --host 0.0.0.0 --port 8080 --model default" in result.stdout


def test_serve_and_compose_commands_check() -> None:
    from tests.monitoring.test_runbooks_docs import check_compose, check_mobile_mm

    commands = deploy_doc.bash_commands()
    serve = [c for c in commands if c.startswith("mobile-mm serve")]
    compose = [c for c in commands if c.startswith("docker-compose")]
    assert len(serve) == len(compose) == 1
    check_mobile_mm(serve[0])
    check_compose(compose[0])


def test_kubectl_applies_the_kustomization() -> None:
    (command,) = [c for c in deploy_doc.bash_commands() if c.startswith("kubectl")]
    assert command == "kubectl apply -k deploy/kubernetes"
    assert (REPO / "deploy" / "kubernetes" / "kustomization.yaml").is_file()
    assert len(rendered()) == 9


def test_the_k8s_rules_command_runs() -> None:
    (command,) = [c for c in deploy_doc.bash_commands() if c.startswith("mobile-mm monitoring")]
    cwd = os.getcwd()
    os.chdir(REPO)  # the command's paths are the repository's
    try:
        result = CliRunner().invoke(app, command.split()[1:])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert "is up to date" in result.output


@pytest.mark.slow
def test_the_training_command_runs(tmp_path: Path) -> None:
    (command,) = [c for c in deploy_doc.bash_commands() if c.startswith("mobile-mm train")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILE_MM_")}
    result = subprocess.run(
        [str(MOBILE_MM), *command.split()[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "dp-tiny"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2 and manifest["training"]["steps"] == 8
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 8


def test_the_capacity_table_is_the_benchmarks() -> None:
    rows = capacity_rows()
    assert deploy_doc.capacity_table() == render_table(rows), (
        "docs/deploy.md's capacity table is not benchmarks/serving/results.json's: paste the output of "
        "`.venv/bin/python -m tests.deploy.capacity` between its markers (and check the prose around it)"
    )
    within = [r for r in rows if r.p95_ms <= 100]
    best = max(r.rps for r in within)
    top = max(within, key=lambda r: r.rps)
    doc = deploy_doc.text()
    assert f"about {best:.0f} requests/s within the target" in doc
    assert f"(measured at {top.concurrency} concurrent" in doc
    beyond = [r.concurrency for r in rows if r.concurrency > top.concurrency]
    if beyond:
        assert f"between {top.concurrency} and {min(beyond)} the benchmark has no point" in doc
    options = results().get("options", {})
    if options.get("repeats") == 1 and "duration" in options:
        assert f"one run of {options['duration']} s" in doc
    elif "repeats" in options and "duration" in options:
        assert f"the median of {options['repeats']} runs of {options['duration']} s" in doc
    triggers = {t["name"]: t["metadata"] for t in by_kind(rendered(), "ScaledObject")["spec"]["triggers"]}
    threshold = float(triggers["request-rate"]["threshold"])
    assert f"ceil(R / {threshold:.0f})" in doc
    share = round(100 * threshold / best, -1)
    assert f"{share:.0f} % of what one pod served" in doc
    assert f"leaves {100 - share:.0f} % headroom" in doc


def test_the_trigger_table_is_the_scaled_object() -> None:
    doc = deploy_doc.text()
    for trigger in by_kind(rendered(), "ScaledObject")["spec"]["triggers"]:
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{trigger['name']}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"`{trigger['metadata']['query']}`"
        assert cells[2].split()[0] == trigger["metadata"]["threshold"]


def test_settings_and_their_defaults_are_as_documented() -> None:
    doc = deploy_doc.text()
    for name in set(re.findall(r"\bMOBILE_MM_[A-Z_]+\b", doc)):
        assert name.removeprefix("MOBILE_MM_").lower() in Settings.model_fields, name
    fields = Settings.model_fields
    assert f"`MOBILE_MM_REDIS_TIMEOUT_S`\n  ({fields['redis_timeout_s'].default} s)" in doc
    assert f"`MOBILE_MM_SHUTDOWN_GRACE_S` ({fields['shutdown_grace_s'].default:.0f} s)" in doc
    assert f"a free key's burst of {fields['rate_limit_free_burst'].default}" in doc
    replicas = by_kind(rendered(), "ScaledObject")["spec"]["maxReplicaCount"]
    assert f"KEDA's maximum, {replicas})" in doc


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_promql_parses(tmp_path: Path) -> None:
    queries = deploy_doc.promql_queries()
    assert len(queries) == 4
    rules = {
        "groups": [
            {"name": "doc", "rules": [{"record": f"doc:q{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    (tmp_path / "doc.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "doc.yml")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_inline_commands_parse() -> None:
    """Commands quoted in the prose: make targets exist, mobile-mm lines parse with the real CLI."""
    from tests.monitoring.test_runbooks_docs import check_mobile_mm

    prose = re.sub(r"```.*?```", "", deploy_doc.text(), flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    makes = [s.split()[1] for s in spans if s.startswith("make ")]
    assert makes and set(makes) <= targets, makes
    clis = [s for s in spans if s.startswith("mobile-mm ")]
    assert clis
    for command in clis:
        check_mobile_mm(command.replace(" ID", " k_0123456789abcdef"))


def test_serve_refuses_sqlite_with_several_replicas(tmp_path: Path) -> None:
    """What the docs promise a pod started without the shared database does: exit, and say why."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILE_MM_")}
    env |= {"MOBILE_MM_REPLICAS": "3", "MOBILE_MM_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(MOBILE_MM), "serve", "--host", "127.0.0.1", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "MOBILE_MM_REPLICAS=3 needs a database every replica shares" in result.stderr
    assert "MOBILE_MM_DATABASE_URL" in result.stderr
    assert not (tmp_path / "mobile_mm.db").exists()  # refused before any SQLite file was made
