"""Issue 16: the supervisor of ``serve --workers N`` killed with SIGKILL (an OOM kill).

Its workers used to stay alive, unsupervised, answering on the port; now each worker leaves within
seconds of losing its parent (serving/parent_watch.py). The worker count comes from
``MOBILE_MM_WORKERS`` alone, so this is also the environment-only path for that setting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
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


# A parent that starts one spawn child the way uvicorn starts a worker; the child ignores SIGTERM,
# so only the watch thread's last resort (os._exit after the grace) can end it.
_PARENT = """
import multiprocessing, signal, sys, time

def child():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a drain that never ends
    from mobile_multimodal.serving.parent_watch import exit_with_parent
    assert exit_with_parent(grace_s=1.0)
    print("watching", flush=True)
    time.sleep(600)

if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=child)
    process.start()
    print(process.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the orphan's exit status as subreaper"
)
def test_a_worker_stuck_in_its_drain_is_ended_after_the_grace(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert parent.stdout.readline().strip() == "watching"  # (the child shares the pipe)
        parent.kill()
        parent.wait(WAIT_S)
        # pytest is the orphan's new parent (tests/leftover_processes.py), so its status is ours
        assert child.wait(WAIT_S) == 70  # EX_SOFTWARE: cut off, not a clean exit
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
