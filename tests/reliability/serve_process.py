"""``mobile-mm serve`` as a real process for the reliability tests: its own process group, its own
data directory, bounded waits.

Example::

    server = ServeProcess(tmp_path, env={"MOBILE_MM_MODEL": str(model_dir)}).start()
    httpx.get(server.url + "/health")
    server.stop_group()    # the supervisor and any worker it left behind
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.servers import REPO, free_port, wait_http

MOBILE_MM = Path(sys.executable).with_name("mobile-mm")
_NOT_INHERITED = ("OTEL_", "MOBILE_MM_", "PROMETHEUS_")
READY_TIMEOUT_S = 300  # torch import + model load on a busy machine; only a failure waits this long


class ServeProcess:
    """One ``mobile-mm serve``; configured by ``env`` (MOBILE_MM_*) and ``args`` (flags).

    The port comes from ``env["MOBILE_MM_PORT"]`` when set there, else it is passed as ``--port``.
    """

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
        env = dict(env or {})
        self.port = int(env.get("MOBILE_MM_PORT") or free_port())
        self.args = list(args or [])
        if "MOBILE_MM_PORT" not in env and "--port" not in self.args:
            self.args += ["--port", str(self.port)]
        if "MOBILE_MM_HOST" not in env and "--host" not in self.args:
            self.args += ["--host", "127.0.0.1"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.output_path = workdir / "serve-output.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)},
            "MOBILE_MM_DATA_DIR": str(workdir / "data"),
            "MOBILE_MM_LOG_DIR": str(workdir / "logs"),
            "MOBILE_MM_AUTH": "disabled",
            "MOBILE_MM_CANARY_INTERVAL_S": "0",  # no background model work competing with the test
            "MOBILE_MM_SHADOW_SAMPLE_RATE": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> ServeProcess:
        with self.output_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(MOBILE_MM), "serve", *self.args],
                cwd=REPO,  # monitoring/observability.yml is found relative to the working directory
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stop_group() reaches --workers N's workers too
            )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /ready answers 200; fails at once when the process exits or its model load fails."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout_s
        problem = f"not ready after {timeout_s} s"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                problem = f"exited with {self.proc.returncode}"
                break
            if "model load failed" in self.output():
                problem = "its model load failed"
                break
            try:
                wait_http(self.url + "/ready", 2, self.proc)
                return
            except (TimeoutError, RuntimeError):
                continue
        self.stop_group()
        raise RuntimeError(f"serve {problem}:\n{self.output()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait(self, timeout_s: float = 120) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout_s)

    def stop_group(self) -> None:
        """SIGKILL whatever is left of the process group (idempotent)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(60)

    def __enter__(self) -> ServeProcess:
        return self if self.proc is not None else self.start()  # (``with server.start(...):``)

    def __exit__(self, *exc: object) -> None:
        self.stop_group()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with these labels in Prometheus text (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
