"""Schemathesis (``st run``, the real tool) against the live service's own ``/openapi.json``: every
route, bodies generated from the schema and outside it, including ``POST /v1/chat/completions``
with ``stream: true`` (server-sent events).

The rules: no answer is a 5xx (the real bundled model serves, so even ``/model/health`` has no
reason for a 503), every 4xx carries the error body (``tests/reliability/fuzz_hooks.py``), and the
same process is still ready and answering correctly afterwards.

Twice: with auth off (the bundled model; ``POST /export`` left out there, as loopback is admin
with auth off and every body it accepts would start a real export child that runs for minutes),
and with keys required and a non-admin key on every call (every operation,
``POST /export`` refused with 403, so no export runs).

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
    quiet = {"MOBILE_MM_CANARY_INTERVAL_S": "0"}
    with serve_ours("default", "fp32", quiet) as server:
        yield server


def run_schemathesis(
    url: str, tmp_path: Path, extra: list[str], headers: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """``st run`` over every operation of ``url``'s schema; the calls it made (fuzz_hooks). The
    schema is fetched first (with ``headers``: it takes the API key when keys are required) and
    given to ``st`` as a file, with ``url`` as the base of every call."""
    spec = httpx.get(url + "/openapi.json", headers=headers or {}, timeout=60).json()
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(spec))
    cmd = [str(ST), "run", str(schema), "--url", url, "--checks", "not_a_server_error,error_body_on_4xx"]
    cmd += ["--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-deterministic"]
    cmd += ["--request-timeout", "120", "--no-color", *extra]
    cmd += [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
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
    # every operation of the schema was called (and other methods on its paths)
    operations = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    answered = {(c["method"], c["path"]) for c in calls}
    excluded = {("POST", "/export")} if "start_export_export_post" in extra else set()
    assert operations - excluded <= answered, sorted(operations - excluded - answered)
    assert max(int(str(c["status"])) for c in calls) < 500
    return calls


def test_no_route_answers_a_server_error(fuzz_server: RunningServer, tmp_path: Path) -> None:
    calls = run_schemathesis(
        fuzz_server.url, tmp_path, ["--exclude-operation-id", "start_export_export_post"]
    )
    # the fuzzing reached the model on the inference route and on the chat route, streaming and not
    ok = [c for c in calls if c["status"] == 200]
    assert any(c["path"] == "/inference" for c in ok)
    assert any(c["path"] == "/v1/chat/completions" and c["stream"] for c in ok)
    assert any(c["path"] == "/v1/chat/completions" and not c["stream"] for c in ok)


def test_with_keys_required_every_route_too(tmp_path: Path) -> None:
    """Auth on, a pro (non-admin) key on every call, rate limits out of the way: the key check and
    the store are fuzzed too, and POST /export is included (403 for this key: no export runs)."""
    data_dir = tmp_path / "data"
    made = subprocess.run(
        [str(ST.with_name("mobile-mm")), "keys", "create", "--user", "fuzz", "--type", "pro", "--json"],
        env={**os.environ, "MOBILE_MM_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    key = json.loads(made.stdout)["key"]
    env = {
        "MOBILE_MM_AUTH": "required",
        "MOBILE_MM_CANARY_INTERVAL_S": "0",
        "MOBILE_MM_RATE_LIMIT_PRO_PER_MINUTE": "1000000",
        "MOBILE_MM_RATE_LIMIT_PRO_BURST": "100000",
    }
    with serve_ours("default", "fp32", env, data_dir=data_dir) as server:
        assert httpx.get(server.url + "/openapi.json", timeout=60).status_code == 401  # keyed too
        calls = run_schemathesis(server.url, tmp_path, [], headers={"Authorization": f"Bearer {key}"})
        assert httpx.get(server.url + "/ready", timeout=60).status_code == 200
    statuses = {c["status"] for c in calls if (c["method"], c["path"]) == ("POST", "/export")}
    assert statuses <= {401, 403, 413, 415, 422}, statuses
    assert any(c["status"] == 200 and c["path"] == "/inference" for c in calls)


def test_the_service_is_still_ready_afterwards(fuzz_server: RunningServer) -> None:
    """Runs after the fuzzing (file order): the same process answers /ready and a real request."""
    assert fuzz_server.process.poll() is None
    assert httpx.get(fuzz_server.url + "/ready", timeout=60).status_code == 200
    answer = httpx.post(
        fuzz_server.url + "/inference", json={"image": scene_uri(), "task": "captioning"}, timeout=120
    )
    assert answer.status_code == 200
    assert answer.json()["result"]["caption"] == "a large red circle in the center"
