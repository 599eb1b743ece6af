from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobile_multimodal.cli import app


def test_bench_outside_a_checkout_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench"])
    assert result.exit_code == 2
    assert "source checkout" in result.output


def test_every_design_command_is_registered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    for command in ("serve", "train", "eval", "quantize", "bench", "keys", "db", "monitoring"):
        assert command in result.output


@pytest.mark.parametrize(
    ("env", "named"),
    [({"MOBILE_MM_PORT": "abc"}, "port"), ({"MOBILE_MM_REPLICAS": "3"}, "MOBILE_MM_DATABASE_URL")],
)
def test_invalid_settings_are_one_clear_line_not_a_traceback(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    import os
    import subprocess
    import sys

    environment = {**os.environ, "MOBILE_MM_DATA_DIR": str(tmp_path), **env}
    environment.pop("MOBILE_MM_DATABASE_URL", None)
    cli = Path(sys.executable).with_name("mobile-mm")
    done = subprocess.run(
        [str(cli), "keys", "list"], env=environment, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "error: invalid settings" in done.stderr and named in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
