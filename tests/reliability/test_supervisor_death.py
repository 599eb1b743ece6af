"""Issue 16: the supervisor of ``serve --workers N`` killed with SIGKILL (an OOM kill).

Its workers used to stay alive, unsupervised, answering on the port; now each worker leaves within
seconds of losing its parent (serving/parent_watch.py). The worker count comes from
``MOBILE_MM_WORKERS`` alone, so this is also the environment-only path for that setting.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from mobile_multimodal.model import MobileMultiModalLLM

from .serve_process import ServeProcess

WAIT_S = 120  # bounds a failure; a passing run sees the workers go in a second or two


def _workers(supervisor: int) -> list[psutil.Process]:
    """The supervisor's spawned workers (not multiprocessing's resource tracker)."""
    return [
        child
        for child in psutil.Process(supervisor).children()
        if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline())
    ]


def _wait_for(what: str, condition: object, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.mark.slow
def test_workers_exit_when_their_supervisor_is_killed(
    tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    model_dir = tiny_model.save(tmp_path / "model")
    server = ServeProcess(tmp_path, env={"MOBILE_MM_MODEL": str(model_dir), "MOBILE_MM_WORKERS": "2"})
    with server:
        _wait_for("two workers", lambda: len(_workers(server.pid)) == 2)
        workers = _workers(server.pid)
        everything = [*workers, *(d for w in workers for d in w.children(recursive=True))]
        # both workers serving (each answer comes from either of them)
        _wait_for(
            "both workers ready",
            lambda: all(httpx.get(server.url + "/ready", timeout=60).status_code == 200 for _ in range(6)),
        )

        os.kill(server.pid, signal.SIGKILL)  # no chance to stop its workers
        assert server.wait(60) == -signal.SIGKILL

        gone, alive = psutil.wait_procs(everything, timeout=WAIT_S)
        assert not alive, f"still running {WAIT_S} s after the supervisor died: {alive}"
        assert {w.pid for w in workers} <= {p.pid for p in gone}
        with pytest.raises(httpx.TransportError):  # nobody answers on the port any more
            httpx.get(server.url + "/alive", timeout=5)
