"""Schemathesis (``st run``, the real tool) against the live service's own ``/openapi.json``: every
route, bodies generated from the schema and outside it, including ``POST /v1/chat/completions``
with ``stream: true`` (server-sent events).

The rules: no answer is a 5xx (the real bundled model serves, so even ``/model/health`` has no
reason for a 503), every 4xx carries the error body (``tests/reliability/fuzz_hooks.py``), and the
same process is still ready and answering correctly afterwards.

One operation is left out: ``POST /export`` (loopback is admin with auth disabled), because every
body it accepts starts a real export child that runs for minutes; its refusals are tested in
tests/serving/test_export_route.py. ``GET /export`` and ``GET /export/{id}`` are fuzzed.

Bounded: ``MAX_EXAMPLES`` per operation and phase, a fixed seed with deterministic generation (the
same cases every run, so a failure reproduces with the printed ``st`` command). Malformed images
have their own corpus tests (tests/serving/test_images.py, test_input_hardening.py), kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from benchmarks.serving.servers import REPO, RunningServer, serve_ours
from benchmarks.serving.workload import scene_uri

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20
SEED = 16
ST = Path(sys.executable).with_name("st")


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RunningServer]:
    quiet = {"MOBILE_MM_CANARY_INTERVAL_S": "0", "MOBILE_MM_SHADOW_SAMPLE_RATE": "0"}
    with serve_ours("default", "fp32", quiet) as server:
        yield server


def test_no_route_answers_a_server_error(fuzz_server: RunningServer, tmp_path: Path) -> None:
    cmd = [
        str(ST),
        "run",
        fuzz_server.url + "/openapi.json",
        "--checks",
        "not_a_server_error,error_body_on_4xx",
    ]
    cmd += ["--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-deterministic"]
    cmd += ["--exclude-operation-id", "start_export_export_post"]
    cmd += ["--request-timeout", "120", "--no-color", "--report", "junit", "--report-dir", str(tmp_path)]
    stats = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.reliability.fuzz_hooks",
        "FUZZ_STATS_FILE": str(stats),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    calls = [json.loads(line) for line in stats.read_text().splitlines()]
    answered = {(c["method"], c["path"]) for c in calls}
    # every operation but the excluded one was called (and other methods on its path), and the
    # fuzzing reached the model on the inference routes and on the chat route, streaming and not
    spec = httpx.get(fuzz_server.url + "/openapi.json", timeout=60).json()
    operations = {(m.upper(), p) for p, item in spec["paths"].items() for m in item} - {("POST", "/export")}
    assert operations <= answered, sorted(operations - answered)
    ok = [c for c in calls if c["status"] == 200]
    assert any(c["path"] == "/inference" for c in ok)
    assert any(c["path"] == "/v1/chat/completions" and c["stream"] for c in ok)
    assert any(c["path"] == "/v1/chat/completions" and not c["stream"] for c in ok)
    assert max(c["status"] for c in calls) < 500


def test_the_service_is_still_ready_afterwards(fuzz_server: RunningServer) -> None:
    """Runs after the fuzzing (file order): the same process answers /ready and a real request."""
    assert fuzz_server.process.poll() is None
    assert httpx.get(fuzz_server.url + "/ready", timeout=60).status_code == 200
    answer = httpx.post(
        fuzz_server.url + "/inference", json={"image": scene_uri(), "task": "captioning"}, timeout=120
    )
    assert answer.status_code == 200
    assert answer.json()["result"]["caption"] == "a large red circle in the center"
