"""Peer servers the serving benchmark measures ours against, in the same run, with the same load.

A peer is a process that serves the same model and answers our ``POST /inference`` body and
``GET /ready``; :data:`PEERS` says how to start each. Today: ``plain_fastapi`` (no batching, no
telemetry). A framework peer (LitServe, BentoML) is one more module here and one more entry.

Example::

    spec = PEERS["plain_fastapi"]
    cmd = spec.command("default", "int2", 8090)   # argv that serves on 127.0.0.1:8090
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerSpec:
    name: str
    description: str
    command: Callable[[str, str, int], list[str]]  # (model, quantization, port) -> argv


def _module_command(module: str) -> Callable[[str, str, int], list[str]]:
    def command(model: str, quantization: str, port: int) -> list[str]:
        return [
            sys.executable,
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
}
