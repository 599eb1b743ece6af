"""The README's export-monitoring commands, run as written against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LiveServer

REPO = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Export monitoring", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readmes_export_monitoring_commands_run_as_written(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    if not (REPO / ".venv" / "bin" / "mobile-mm").exists():
        pytest.skip("the console scripts are not installed (run make setup)")
    # serves a tiny model; exports what MOBILE_MM_MODEL names: the bundled one, with its INT2 variant
    server = live_server(auth="required", model="default", data_dir=tmp_path / "data")
    create, start, status = _commands()
    env = {**os.environ, "MOBILE_MM_DATA_DIR": str(tmp_path / "data")}
    created = subprocess.run(
        create, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    env["ADMIN_KEY"] = json.loads(created.stdout)["key"]

    def curl(command: str) -> dict[str, object]:
        command = command.replace("localhost:8080", f"127.0.0.1:{server.port}")
        done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    job = curl(start)
    assert job["status"] == "queued" and (job["platform"], job["quantization"]) == ("android", "int2")
    env["EXPORT_ID"] = str(job["id"])
    deadline = time.monotonic() + 600
    while (state := curl(status))["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(2)
    assert state["status"] == "succeeded", state["error"]
    manifest = state["manifest"]
    assert isinstance(manifest, dict) and manifest["quantization"] == "int2"
    assert (tmp_path / "data" / "exports" / str(job["id"]) / "manifest.json").is_file()
