"""docs/deploy.md is code: each command runs here or is checked with the reason it cannot run, its
numbers come from the benchmark and the manifests, and its PromQL parses (the multi-instance test
evaluates it against three live instances)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchmarks.serving.capacity import END, START, doc_section, update_doc
from benchmarks.serving.capacity import main as capacity_main
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.settings import Settings

from . import deploy_doc
from .capacity import (
    P95_TARGET_MS,
    capacity_rows,
    render_section,
    render_table,
    request_rate_threshold,
    results,
)
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
    assert len(commands) == 7
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


TRAINING_COMMANDS = [c for c in deploy_doc.bash_commands() if c.startswith("mobile-mm train")]


def test_the_training_section_shows_both_commands() -> None:
    assert len(TRAINING_COMMANDS) == 2 and "--data-workers 1" in TRAINING_COMMANDS[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_the_training_command_runs(tmp_path: Path, command: str) -> None:
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
    words = command.split()
    out = tmp_path / words[words.index("--out") + 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2 and manifest["training"]["steps"] == 8
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 8


def test_the_capacity_section_is_the_committed_benchmark() -> None:
    data = results()
    threshold = request_rate_threshold()
    assert doc_section(deploy_doc.text()) == render_section(data, threshold), (
        "docs/deploy.md's capacity section is not benchmarks/serving/results.json's: run "
        "`.venv/bin/python -m benchmarks.serving.capacity`"
    )
    doc = deploy_doc.text()
    rows = capacity_rows()
    assert render_table(rows) in doc
    top = max((r for r in rows if r.p95_ms <= P95_TARGET_MS), key=lambda r: r.rps)
    assert f"about {top.rps:.0f} requests/s within the target" in " ".join(doc.split())
    assert f"ceil(R / {threshold:.0f})" in doc
    triggers = by_kind(rendered(), "ScaledObject")["spec"]["triggers"]
    (rate,) = [t for t in triggers if t["name"] == "request-rate"]
    assert threshold == float(rate["metadata"]["threshold"])


def _remeasured(data: dict[str, Any], factor: float, repeats: int, p95_factor: float = 1.0) -> dict[str, Any]:
    """The committed results as another run could give them: every rate times ``factor``, every
    p95 times ``p95_factor``, ``repeats`` runs."""
    new = copy.deepcopy(data)
    new["options"]["repeats"] = repeats
    for runs in new["precisions"]["int2"]["servers"]["ours"]["tasks"].values():
        for run in runs.values():
            run["median"]["rps"] *= factor
            run["median"]["p95_ms"] *= p95_factor
    return new


def test_a_new_benchmark_run_rewrites_the_section(tmp_path: Path) -> None:
    """What benchmarks.serving.run does after a run (update_doc): only the section changes, and it
    then says what the new results say, so the check above holds again."""
    doc = tmp_path / "deploy.md"
    before = deploy_doc.text()
    doc.write_text(before)
    data = _remeasured(results(), factor=2.5, repeats=3, p95_factor=0.4)
    assert update_doc(data, doc) is True
    after = doc.read_text()
    assert doc_section(after) == render_section(data, request_rate_threshold())
    outside = before.split(START)[0], before.split(END)[1]
    assert after.split(START)[0] == outside[0] and after.split(END)[1] == outside[1]
    assert "the median of 3 runs of" in after
    assert render_table(capacity_rows(data)) in after
    assert update_doc(data, doc) is False  # idempotent
    # the benchmark's own check, as its module docstring shows it
    assert capacity_main(["--doc", str(doc), "--check"]) == 1  # the committed results differ now
    assert capacity_main(["--check"]) == 0  # the committed doc is the committed results'


def test_a_pod_slower_than_the_threshold_or_the_target_is_said_so() -> None:
    threshold = request_rate_threshold()
    best = max(r.rps for r in capacity_rows() if r.p95_ms <= P95_TARGET_MS)
    slower = render_section(_remeasured(results(), factor=0.5 * threshold / best, repeats=1), threshold)
    slower = " ".join(slower.split())
    assert "lower `request-rate`'s threshold" in slower and "headroom" not in slower
    hopeless = render_section(_remeasured(results(), factor=1.0, repeats=1, p95_factor=1000), threshold)
    assert "No measured concurrency kept the p95 within 100 ms" in " ".join(hopeless.split())


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
