"""The shipped deployment guards /metrics with a bearer token, and its Prometheus sends it.

Once, ``/metrics`` (user ids, per-user counts) was open unless ``MOBILE_MM_METRICS_TOKEN`` was set,
and neither docker-compose.yml nor monitoring/prometheus.yml set or sent one (issue 12). Here:
compose gives the app and Prometheus the same secret file, the scrape job reads it, the app
refuses to start without it, the documented commands make a token the app accepts, and a real
Prometheus with our scrape job scrapes a real app that requires the token, while the same job
without the token, or with a wrong one, is refused.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.servers import AppServer, free_port

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.settings import Settings

from .localstack import (
    MONITORING,
    REPO,
    PrometheusProcess,
    load_yaml,
    missing_binaries,
    prometheus_test_config,
)
from .test_compose import _compose

SECRET_TARGET = "/run/secrets/metrics_token"  # where compose mounts a secret named metrics_token
APP_JOB = "mobile-multimodal-llm"


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = _compose("--profile", "monitoring", "--profile", "gpu", "config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def _app_job() -> dict[str, Any]:
    (job,) = [
        j for j in load_yaml(MONITORING / "prometheus.yml")["scrape_configs"] if j["job_name"] == APP_JOB
    ]
    return dict(job)


# --- the configuration ---------------------------------------------------------------------
def test_compose_gives_the_app_and_prometheus_the_token(resolved: dict[str, Any]) -> None:
    secret = resolved["secrets"]["metrics_token"]
    assert Path(secret["file"]) == REPO / "monitoring" / "secrets" / "metrics_token"
    for name in ("app-prod", "app-gpu", "prometheus"):
        service = resolved["services"][name]
        assert [s["source"] for s in service.get("secrets", [])] == ["metrics_token"], name
    for name in ("app-prod", "app-gpu"):
        env = resolved["services"][name]["environment"]
        assert env["MOBILE_MM_METRICS_TOKEN_FILE"] == SECRET_TARGET, name
        assert (
            "MOBILE_MM_METRICS_TOKEN" not in env
        )  # a value in the environment would show in `docker inspect`


def test_the_token_file_is_never_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "monitoring/secrets/metrics_token"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0


def test_the_scrape_job_sends_the_compose_secret() -> None:
    assert _app_job()["authorization"] == {"type": "Bearer", "credentials_file": SECRET_TARGET}


def test_prometheus_yml_is_fully_valid_with_the_token_in_place(tmp_path: Path) -> None:
    """promtool's full check (it opens the files the config names) on a copy whose token path
    exists; `monitoring check` runs --syntax-only because /run/secrets exists only in the stack."""
    if missing_binaries("promtool"):
        pytest.fail("promtool is not installed (scripts/install_system_deps.sh installs it)")
    token = tmp_path / "metrics_token"
    token.write_text("t" * 43)
    config = load_yaml(MONITORING / "prometheus.yml")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    token.unlink()  # and the full check does notice a missing token
    assert subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, check=False
    ).returncode


def _documented_token_commands(doc: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
    return [
        line for block in blocks for line in block.splitlines() if "monitoring/secrets/metrics_token" in line
    ]


@pytest.mark.parametrize("doc", [MONITORING / "secrets" / "README.md", REPO / "docs" / "monitoring.md"])
def test_the_documented_commands_make_a_token_the_app_accepts(doc: Path, tmp_path: Path) -> None:
    commands = _documented_token_commands(doc)
    assert len(commands) == 2, commands  # write it, then chmod
    (tmp_path / "monitoring" / "secrets").mkdir(parents=True)
    for command in commands:
        subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=60)
    token_file = tmp_path / "monitoring" / "secrets" / "metrics_token"
    assert token_file.stat().st_mode & 0o777 == 0o644
    token = token_file.read_text().strip()
    assert len(token) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert Settings(metrics_token_file=token_file).metrics_token == token


def test_the_app_does_not_start_without_its_token_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--port", str(free_port())],
        env={"MOBILE_MM_DATA_DIR": str(tmp_path), "MOBILE_MM_METRICS_TOKEN_FILE": str(tmp_path / "absent")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "metrics_token_file" in result.stderr and "absent" in result.stderr
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        Settings(metrics_token_file=tmp_path / "empty")


# --- a real scrape -------------------------------------------------------------------------------
def _up(prom: PrometheusProcess, job: str) -> float | None:
    result = prom.query(f'up{{job="{job}"}}')
    return float(result[0]["value"][1]) if result else None


@pytest.mark.slow
@pytest.mark.integration
def test_prometheus_scrapes_the_app_only_with_the_token(tmp_path: Path) -> None:
    if missing_binaries("prometheus"):
        pytest.fail("prometheus is not installed (scripts/install_system_deps.sh installs it)")
    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    token = tmp_path / "metrics_token"
    token.write_text("scrape-token-" + "x" * 30 + "\n")
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-token")
    (tmp_path / "app").mkdir()
    with AppServer(model_dir, tmp_path / "app", {"MOBILE_MM_METRICS_TOKEN_FILE": str(token)}) as app:
        target = f"127.0.0.1:{app.port}"
        config = prometheus_test_config(tmp_path / "none.yml", {APP_JOB: [target]}, "127.0.0.1:1", token)
        config.pop("alerting")
        config["rule_files"] = []
        ours = config["scrape_configs"][0]
        assert ours["authorization"]["credentials_file"] == str(token)  # our job, our token
        no_token = copy.deepcopy(ours) | {"job_name": "no-token"}
        del no_token["authorization"]
        wrong_token = copy.deepcopy(ours) | {"job_name": "wrong-token"}
        wrong_token["authorization"]["credentials_file"] = str(wrong)
        config["scrape_configs"] += [no_token, wrong_token]
        with PrometheusProcess(tmp_path / "prom", config) as prom:
            deadline = time.monotonic() + 60
            ups: dict[str, float | None] = {}
            while time.monotonic() < deadline:
                ups = {job: _up(prom, job) for job in (APP_JOB, "no-token", "wrong-token")}
                if None not in ups.values():
                    break
                time.sleep(0.25)
            assert ups == {APP_JOB: 1.0, "no-token": 0.0, "wrong-token": 0.0}
            # The app counted both refusals, and the authorized job scraped those counts.
            deadline = time.monotonic() + 60
            refused: set[str] = set()
            while time.monotonic() < deadline and refused != {
                "missing_metrics_token",
                "invalid_metrics_token",
            }:
                result = prom.query(f'auth_failures_total{{job="{APP_JOB}"}} > 0')
                refused = {r["metric"]["reason"] for r in result} & {
                    "missing_metrics_token",
                    "invalid_metrics_token",
                }
                time.sleep(0.25)
            assert refused == {"missing_metrics_token", "invalid_metrics_token"}
            assert prom.query(f'model_info{{job="{APP_JOB}"}}'), "the authorized scrape has the app's series"
