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
