"""Fixtures for the monitoring-stack tests: the Node validator of monitoring/grafana/validate."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .localstack import MONITORING

VALIDATOR = MONITORING / "grafana" / "validate"


@pytest.fixture(scope="session")
def grafana_validator() -> Path:
    """monitoring/grafana/validate with its node_modules installed (``npm ci`` once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm is not installed: the dashboard schema check needs them")
    if not (VALIDATOR / "node_modules" / "@grafana" / "schema").is_dir():
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=VALIDATOR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return VALIDATOR


def parse_expressions(validator: Path, mode: str, exprs: list[str]) -> list[dict[str, Any]]:
    """Parse PromQL (``--promql``: also lists metric names) or LogQL (``--logql``) with Grafana's grammars."""
    result = subprocess.run(
        ["node", "validate.mjs", mode],
        cwd=validator,
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=600,  # bounds a hang; parsing every expression is slow on a loaded machine
        check=True,
    )
    return list(json.loads(result.stdout))
