"""A real Redis server (the Debian package's ``redis-server``) on 127.0.0.1, started and stopped by a test.

No persistence, no protected-mode surprises: a throwaway in-memory server on a free port.

Example::

    with RedisServer(tmp_path) as redis_server:
        os.environ["MOBILE_MM_REDIS_URL"] = redis_server.url
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .servers import free_port, stop_process

BINARY = "redis-server"


def available() -> str | None:
    """Why Redis cannot run here, or None when it can."""
    if shutil.which(BINARY) is None:
        return "redis-server is not installed (scripts/install_system_deps.sh installs it)"
    return None


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> RedisServer:
        self._proc = subprocess.Popen(
            [
                BINARY,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
                raise RuntimeError(f"redis-server did not start: {log}")
            time.sleep(0.1)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
