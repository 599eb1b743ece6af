"""Start the servers a benchmark compares: ours (``mobile-mm serve``) and its peers, on 127.0.0.1.

Each is its own process, started cold, timed from spawn until ``GET /ready`` answers 200
(imports, model load and warm-up: what an operator waits for), and measured for resident
memory (RSS, the server process itself) while it runs.

Example::

    with serve_ours("default", "int2", {"MOBILE_MM_MAX_BATCH_SIZE": "16"}) as server:
        server.url, server.ready_s, server.rss_bytes()
    with serve_peer("plain_fastapi", "default", "int2") as server:
        ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
from benchmarks.peers import PEERS
from tests.integration.servers import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 300  # a cold start imports torch and loads a model: minutes on a busy machine


@dataclass
class RunningServer:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    ready_s: float
    tree: bool = False  # a framework peer: worker processes under it

    def rss_bytes(self) -> int:
        """The server's resident memory: its process, and for a framework peer every process
        under it too (the HTTP side and the inference workers that hold the model)."""
        proc = psutil.Process(self.process.pid)
        procs = [proc, *proc.children(recursive=True)] if self.tree else [proc]
        total = 0
        for p in procs:
            with suppress(psutil.NoSuchProcess):
                total += int(p.memory_info().rss)
        return total


def _stop(proc: subprocess.Popen[bytes], tree: bool = False) -> None:
    """SIGTERM, then SIGKILL after 60 s. ``tree``: a framework peer, whose workers (LitServe's
    multiprocessing workers, BentoML's circus watchers in sessions of their own) may outlive a
    SIGTERM to their parent: every process under it at stop time gets the same treatment."""
    under: list[psutil.Process] = []
    if tree:
        with suppress(psutil.NoSuchProcess):
            under = psutil.Process(proc.pid).children(recursive=True)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
    alive = [p for p in under if p.is_running()]
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=30)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=30)


@contextmanager
def _serve(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    tree: bool = False,
    ready_path: str = "/ready",
) -> Iterator[RunningServer]:
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(url + ready_path, timeout_s=READY_TIMEOUT_S, process=proc)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{name} did not become ready: {log.read_text()[-3000:]}") from exc
        yield RunningServer(name, url, proc, time.perf_counter() - started, tree)
    finally:
        _stop(proc, tree)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MOBILE_MM_", "OTEL_"))}


@contextmanager
def serve_ours(
    model: str,
    quantization: str,
    env_extra: dict[str, str],
    name: str = "ours",
    data_dir: Path | None = None,
) -> Iterator[RunningServer]:
    """``mobile-mm serve`` with auth off, its own data directory (or ``data_dir``: keys made
    there beforehand are known to it), and ``env_extra`` on top."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **_clean_env(),
            "MOBILE_MM_DATA_DIR": str(data_dir or Path(tmp) / "data"),
            "MOBILE_MM_LOG_DIR": str(Path(tmp) / "logs"),
            "MOBILE_MM_AUTH": "disabled",
            **env_extra,
        }
        cmd = [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--model", model, "--quantization", quantization]
        with _serve(name, cmd, env, port, Path(tmp) / "stdout.log") as server:
            yield server


@contextmanager
def serve_peer(peer: str, model: str, quantization: str) -> Iterator[RunningServer]:
    """A peer of ``benchmarks/peers`` (its venv, if it has one, built beforehand:
    ``PEERS[peer].prepare()``); on exit, it and every process under it are stopped."""
    spec = PEERS[peer]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stdout.log"
        cmd = spec.command(model, quantization, port)
        with _serve(peer, cmd, _clean_env(), port, log, tree=True, ready_path=spec.ready_path) as server:
            yield server
