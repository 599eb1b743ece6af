"""Processes for integration tests: free ports, readiness polling, and the real app under ``mobile-mm serve``.

Example::

    with AppServer(model_dir, tmp_path, env={"MOBILE_MM_METRICS_TOKEN": "t"}) as app:
        httpx.post(f"{app.url}/inference", json={...})
    app.log_lines()          # every JSON line the app wrote to its log file
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
MOBILE_MM = Path(sys.executable).with_name("mobile-mm")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A port nobody listens on, for a server that another process will bind.

    Not ``bind(0)``: the kernel hands out its ephemeral range to every outgoing connection and to
    every other ``bind(0)`` on the machine, so a port it has just freed for us can be taken before
    the server binds it (on a busy machine that happens). A random port below that range, checked
    free, cannot be taken that way.
    """
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    if low > 11024:
        for _ in range(200):
            port = rng.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:  # no room below the range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None, status: int = 200
) -> None:
    """Poll ``url`` until it answers ``status``; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == status:
                    return
                last = response.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} not answering {status} after {timeout_s}s (last: {last})")


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something true and return that; ``TimeoutError`` naming
    ``what`` after ``timeout_s`` (a bound only a failure reaches: it never decides an outcome)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not seen within {timeout_s} s")


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 10) -> None:
    """Terminate a helper process (Prometheus, Redis, ...); kill it if it ignores that for ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_gone(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` exits within ``timeout_s`` (a zombie counts: it has exited, and its
    new parent, pytest as a subreaper or init, reaps it)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def scene_png_b64(color: str = "red", seed: int = 0) -> str:
    """A small scene image (a shape on a plain background) as a base64 data URI."""
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    x = 8 + (seed * 7) % 24
    draw.ellipse((x, 16, x + 28, 44), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class AppServer:
    """The real service (``mobile-mm serve``) in a subprocess on 127.0.0.1, logs under ``workdir``."""

    def __init__(self, model_dir: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.stdout_path = workdir / "stdout.log"
        self.model_dir = model_dir
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("OTEL_", "MOBILE_MM_", "PROMETHEUS_"))
            },
            "MOBILE_MM_DATA_DIR": str(workdir / "data"),
            "MOBILE_MM_LOG_DIR": str(self.log_dir),
            "MOBILE_MM_AUTH": "disabled",
            **(env or {}),
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 300) -> AppServer:
        out = self.stdout_path.open("wb")
        self._proc = subprocess.Popen(
            [
                str(MOBILE_MM),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--model",
                str(self.model_dir),
            ],
            cwd=REPO,  # monitoring/observability.yml is found relative to the working directory
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        try:
            wait_http(f"{self.url}/ready", ready_timeout_s, self._proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"the app did not become ready:\n{self.stdout_path.read_text()[-3000:]}"
            ) from exc
        return self

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown flushes spans and logs), then wait."""
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            code = self._proc.returncode
        self._proc = None
        return code

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the app is not running")
        return self._proc.pid

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_lines(self) -> list[dict[str, Any]]:
        """Every line of the app's log file, parsed (raises if one is not JSON)."""
        lines = []
        for path in sorted(self.log_dir.glob("application.log*")):
            for number, text in enumerate(path.read_text().splitlines(), 1):
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise AssertionError(f"{path.name}:{number} is not JSON: {text[:200]!r}") from exc
        return lines

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines()
