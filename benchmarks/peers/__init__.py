"""Peer servers the serving benchmark measures ours against, in the same run, with the same load.

A peer is a process that serves the same model and answers our ``POST /inference`` body and
``GET /ready``; :data:`PEERS` says how to start each: ``plain_fastapi`` (no batching, no
telemetry), and the serving frameworks users compare us with, each with its own batching:
``litserve`` (dynamic batching; installs into ``.venv`` without moving a pinned package, so it is
in the ``peers`` and ``dev`` extras) and ``bentoml`` (adaptive batching; it would move
OpenTelemetry packages of ``.venv``, so it runs from its own venv, ``venvs.py``, built on
demand by :meth:`PeerSpec.prepare`).

Example::

    spec = PEERS["bentoml"]
    spec.prepare()                                 # builds var/peer-venvs/bentoml once (minutes)
    cmd = spec.command("default", "int2", 8090)   # argv that serves on 127.0.0.1:8090
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.venvs import PeerVenv

BENTOML_VENV = PeerVenv("bentoml", ("bentoml==1.4.40",))


@dataclass(frozen=True)
class PeerSpec:
    name: str
    description: str
    command: Callable[[str, str, int], list[str]]  # (model, quantization, port) -> argv
    framework: bool = False  # a serving framework (the targets compare ours with the best of these)
    venv: PeerVenv | None = None  # its own venv, else this interpreter's
    module: str | None = None  # what must import in this interpreter when there is no venv
    ready_path: str = "/ready"  # 200 once the model is loaded and the server answers

    def unavailable(self) -> str | None:
        """Why this peer cannot start now (None: it can): its package is not installed here, or
        its venv is not built yet."""
        if self.venv is not None:
            return None if self.venv.ready() else f"{self.venv.path} is not built (prepare() builds it)"
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (pip install -e '.[peers]')"
        return None

    def prepare(self, log: Path | None = None) -> None:
        """Build the peer's venv if it has one and it is missing or stale (minutes, once)."""
        if self.venv is not None:
            self.venv.ensure(log)


def _module_command(module: str, venv: PeerVenv | None = None) -> Callable[[str, str, int], list[str]]:
    def command(model: str, quantization: str, port: int) -> list[str]:
        return [
            sys.executable if venv is None else str(venv.python),
            "-m",
            module,
            "--model",
            model,
            "--quantization",
            quantization,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    return command


PEERS: dict[str, PeerSpec] = {
    "plain_fastapi": PeerSpec(
        "plain_fastapi",
        "the same model behind one FastAPI route: no batching, no telemetry, no hardening",
        _module_command("benchmarks.peers.plain_fastapi"),
    ),
    "litserve": PeerSpec(
        "litserve",
        "LitServe 0.2.19, dynamic batching (max 16, 5 ms), one CPU worker",
        _module_command("benchmarks.peers.litserve_peer"),
        framework=True,
        module="litserve",
    ),
    "bentoml": PeerSpec(
        "bentoml",
        "BentoML 1.4.40, adaptive batching (max 16; max_latency_ms 10 s: its shedding deadline), own venv",
        _module_command("benchmarks.peers.bentoml_peer", BENTOML_VENV),
        framework=True,
        venv=BENTOML_VENV,
        ready_path="/readyz",
    ),
}
