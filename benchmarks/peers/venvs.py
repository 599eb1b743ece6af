"""A separate virtual environment for a peer framework that cannot share the project's venv.

BentoML 1.4.40 brings its own OpenTelemetry instrumentation packages, which pin
``opentelemetry-api``/``-sdk``/``-semantic-conventions`` to other patch releases than the ones
``.venv`` resolved for our server, and about thirty more packages (aiohttp, tornado, kantoku,
...). So it gets ``var/peer-venvs/<name>`` (gitignored, no system site packages), built on
demand the way ``make setup`` builds ``.venv``: torch 2.13.0 first, with the options of
``scripts/torch_index_args.sh`` (a local wheel or the CPU index, never a CUDA build), then the
project (editable, so the peer serves this checkout's model code) with its runtime
dependencies, and the framework pinned, in one resolution. A stamp file records what was
installed; a change to the requirements or to pyproject.toml's dependencies rebuilds it.

Example::

    venv = PeerVenv("bentoml", ("bentoml==1.4.40",))
    venv.ready()        # False until built
    python = venv.ensure()   # builds it if needed (minutes), returns its python
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / "var" / "peer-venvs"
TORCH = "torch==2.13.0"  # the Makefile's pin
BUILD_TIMEOUT_S = 1800  # a cold pip cache on a slow mirror; bounded all the same


def _runtime_dependencies() -> list[str]:
    deps: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return deps


@dataclass(frozen=True)
class PeerVenv:
    name: str
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def _stamp(self) -> Path:
        return self.path / ".installed"

    def fingerprint(self) -> str:
        """What the venv must hold: the framework, torch, the project's runtime dependencies and
        this interpreter's version."""
        spec = [TORCH, *self.requirements, *_runtime_dependencies(), sys.version.split()[0]]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def ready(self) -> bool:
        return self._stamp.is_file() and self._stamp.read_text().strip() == self.fingerprint()

    def ensure(self, log: Path | None = None) -> Path:
        """The venv's python, building the venv first when it is missing or stale."""
        if not self.ready():
            self.build(log)
        return self.python

    def build(self, log: Path | None = None) -> None:
        started = time.perf_counter()
        print(f"building the {self.name} peer's venv in {self.path} (once; minutes)", flush=True)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._run([sys.executable, "-m", "venv", str(self.path)], log)
        pip = [str(self.python), "-m", "pip", "install", "--quiet"]
        # as make setup: the pip that ships with venv (23.x) cannot resolve bentoml's metadata
        self._run([*pip, "--upgrade", "pip"], log)
        torch_args = subprocess.run(
            ["sh", str(REPO / "scripts" / "torch_index_args.sh"), "auto", "", str(self.python)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.split()
        self._run([*pip, *torch_args, TORCH], log)
        # torch stays pinned in the second resolution: the framework may not replace it
        self._run([*pip, "-e", str(REPO), *self.requirements, TORCH], log)
        self._stamp.write_text(self.fingerprint() + "\n")
        print(f"{self.name} peer venv built in {time.perf_counter() - started:.0f} s", flush=True)

    def _run(self, cmd: list[str], log: Path | None) -> None:
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if log is not None:
            with log.open("a") as out:
                out.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
