"""`mobile-mm export` and `mobile-mm export check`, and the README's export commands run as written."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.export import onnx as onnx_format
from mobile_multimodal.export import pipeline

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _no_work(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a refused export loaded the model")


def test_a_pair_that_makes_no_sense_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "_load", _no_work)
    monkeypatch.chdir(tmp_path)  # where the default data dir (database, logs) would appear
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, ["export", "--platform", "android", "--format", "coreml", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "UNSUPPORTED_PLATFORM_FORMAT" in result.output and "for android choose one of" in result.output
    assert not out.exists()
    result = CliRunner().invoke(
        app, ["export", "--platform", "ios", "--quantization", "int3", "--out", str(out)]
    )
    assert result.exit_code == 2 and "UNKNOWN_QUANTIZATION" in result.output
    assert CliRunner().invoke(app, ["export", "--out", str(out)]).exit_code == 2  # no --platform
    assert list(tmp_path.iterdir()) == []  # no bundle, no database, no log file


def test_export_check_lists_versions_and_exits_by_the_requested_formats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = CliRunner().invoke(app, ["export", "check", "--format", "onnx"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("onnx "))
    assert "ready" in line
    assert f"onnxruntime {importlib.metadata.version('onnxruntime')}" in line
    assert f"onnx {importlib.metadata.version('onnx')}" in line
    assert f"onnxruntime-genai {importlib.metadata.version('onnxruntime-genai')} (optional)" in line

    everything = CliRunner().invoke(app, ["export", "check", "--json"])
    report = json.loads(everything.output)
    assert [f["format"] for f in report["formats"]] == ["onnx", "executorch", "coreml", "tflite"]
    required_missing = [f for f in report["formats"] if f["required"] and not f["ready"]]
    assert everything.exit_code == (1 if required_missing else 0)

    monkeypatch.setattr(onnx_format, "package_version", lambda name: None if name == "onnxruntime" else "9.9")
    missing = CliRunner().invoke(app, ["export", "check", "--format", "onnx"])
    assert missing.exit_code == 1
    assert "MISSING" in missing.output and "onnxruntime (not installed)" in missing.output
    assert "pip install onnx onnxruntime" in missing.output
    unknown = CliRunner().invoke(app, ["export", "check", "--format", "tensorrt"])
    assert unknown.exit_code == 2 and "UNKNOWN_FORMAT" in unknown.output


def test_the_mobile_mm_export_alias_runs_the_export_command() -> None:
    script = Path(sys.executable).parent / "mobile-mm-export"
    if not script.exists():
        pytest.skip("the console scripts are not installed (run make setup)")
    done = subprocess.run(
        [str(script), "check", "--format", "onnx"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "all requested toolchains are ready" in done.stdout


def _readme_export_commands() -> list[str]:
    section = README.split("## Export for Android and iOS", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if "mobile-mm" in line]


def test_the_readmes_export_commands_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _readme_export_commands()
    assert any(" export --platform" in c for c in commands) and any("export check" in c for c in commands)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)
        assert argv[0].endswith("mobile-mm"), command
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, (command, result.output)
        out = next((argv[i + 1] for i, a in enumerate(argv) if a == "--out"), None)
        if out is not None:
            manifest = json.loads((tmp_path / out / "manifest.json").read_text())
            validation = manifest["validation"]
            assert validation["executed"] and validation["tasks"] == validation["reference"]
            assert f"bundle: {tmp_path / out}" in result.output or f"bundle: {out}" in result.output


def test_sigterm_ends_an_export_like_ctrl_c(tmp_path: Path) -> None:
    """A stopped container or job runner sends SIGTERM: the export ends as interrupted (exit 130)
    and leaves neither the bundle nor its temporary directory."""
    out = tmp_path / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-m", "mobile_multimodal.cli", "export", "--platform", "android", "--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a crash shows where it happened
    )
    try:
        # wait (bounded) until the bundle is being written: the temporary directory beside --out
        for _ in range(6000):
            if (
                any(p.name.startswith(".bundle.tmp-") for p in tmp_path.iterdir())
                or process.poll() is not None
            ):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the export ended before it could be interrupted"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "EXPORT_INTERRUPTED" in stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]
