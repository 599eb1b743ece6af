"""The session check of tests/conftest.py fails a run that leaves a process behind, and only then.

A nested pytest runs one test that starts a process and lets it go (``setsid ... &``: orphaned,
so only the subreaper and the environment marker still tie it to the session).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tests.integration.servers import REPO

LEAKS = """
import subprocess

def test_leaves_a_process_behind():
    subprocess.run(["bash", "-c", "setsid sleep 600 >/dev/null 2>&1 &"], check=True)
"""
CLEAN = """
import subprocess

def test_waits_for_its_process():
    subprocess.run(["sleep", "0"], check=True)
"""


def _nested_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_nested.py"
    test.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--leftover-wait=1", str(test)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux's")
def test_a_process_left_behind_fails_the_run_and_is_killed(tmp_path: Path) -> None:
    done = _nested_pytest(tmp_path, LEAKS)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "outlived the session" in done.stdout and "sleep 600" in done.stdout, done.stdout[-2000:]
    pid = int(re.search(r"pid (\d+): sleep 600", done.stdout).group(1))  # type: ignore[union-attr]
    with contextlib.suppress(psutil.NoSuchProcess):  # gone: killed by the nested session on its way out
        leaked = psutil.Process(pid)
        assert leaked.status() == psutil.STATUS_ZOMBIE, f"{leaked} survived"
        leaked.wait(60)  # (a zombie re-parented to this session: reap it)


def test_a_clean_run_passes(tmp_path: Path) -> None:
    done = _nested_pytest(tmp_path, CLEAN)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "outlived" not in done.stdout
