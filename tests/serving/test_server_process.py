"""``mobile-mm serve`` as a real process: SIGTERM draining, and --workers N with multiprocess metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.redis_server import RedisServer
from tests.integration.redis_server import available as redis_missing
from tests.integration.servers import free_port, wait_http

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import Database

from .conftest import data_uri, metric_value


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model directory (tiny config) written by MobileMultiModalLLM.save."""
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(
        tmp_path_factory.mktemp("model") / "tiny"
    )


def _serve(model_dir: Path, tmp_path: Path, *extra: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environ = {**os.environ, "MOBILE_MM_DATA_DIR": str(tmp_path), "MOBILE_MM_AUTH": "disabled", **env}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [
        sys.executable,
        "-m",
        "mobile_multimodal.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(model_dir),
        *extra,
    ]
    # its own process group: stop_group() also ends --workers N's workers, which a killed
    # supervisor would leave running
    proc = subprocess.Popen(
        cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", timeout_s=300, process=proc)  # torch import + load, on a busy machine
    except RuntimeError as exc:  # it exited: show why
        raise RuntimeError(
            f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        ) from exc
    except TimeoutError:
        stop_group(proc)
        raise
    return proc, url


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of a server started by :func:`_serve`: the supervisor and its workers."""
    with contextlib.suppress(ProcessLookupError):  # nothing left
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_group(proc)


def _start_request(port: int, body: bytes) -> socket.socket:
    """POST /inference up to its body: the headers ask ``Expect: 100-continue``, and the server's
    100 says the request is in progress there (the app is reading its body)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn.sendall(
        b"POST /inference HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = conn.recv(1)
        assert chunk, f"the server closed the connection: {interim!r}"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return conn


def _finish_request(conn: socket.socket, body: bytes) -> tuple[int, bytes]:
    """Send the body; the status and the whole response (the server closes the connection)."""
    conn.sendall(body)
    response = b""
    while chunk := conn.recv(65536):
        response += chunk
    conn.close()
    return int(response.split(b" ", 2)[1]), response


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(
    model_dir: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _serve(model_dir, tmp_path, MOBILE_MM_MAX_BATCH_WAIT_MS="400", MOBILE_MM_MAX_BATCH_SIZE="16")
    processes.append(proc)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"image": data_uri(), "task": "ocr"}).encode()
    # Ten requests in progress in the server (each had its 100 Continue) when the signal arrives,
    # however long this machine took to get them there; their bodies come after it.
    conns = [_start_request(port, body) for _ in range(10)]
    proc.send_signal(signal.SIGTERM)
    responses = [_finish_request(conn, body) for conn in conns]
    assert [status for status, _ in responses] == [200] * 10, [text[-500:] for _, text in responses]
    # a drain that finished is a clean stop: exit 0 (uvicorn alone would re-raise the SIGTERM)
    assert proc.wait(30) == 0
    with pytest.raises(httpx.TransportError):  # and it no longer accepts connections
        httpx.get(url + "/alive", timeout=2)


def _log_lines(log_dir: Path) -> list[dict[str, Any]]:
    """The JSON lines the workers have written so far (a line still being written is left out)."""
    lines = []
    for path in log_dir.glob("application.log*"):
        text = path.read_text()
        lines += [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]
    return lines


def _instances(log_dir: Path, match: Callable[[dict[str, Any]], bool]) -> set[str]:
    return {line["instance_id"] for line in _log_lines(log_dir) if match(line)}


@pytest.mark.slow
def test_workers_share_one_view_of_the_metrics(
    model_dir: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _serve(model_dir, tmp_path, "--workers", "2", MOBILE_MM_LOG_SAMPLE_RATIO="1")
    processes.append(proc)
    logs = tmp_path / "logs"
    # Both workers must be ready: the first /ready answered by one of them says nothing of the other.
    # Each worker's log lines name its process (instance_id = host-pid; /alive no longer tells the pid).
    deadline = time.monotonic() + 120
    while len(_instances(logs, lambda line: line["message"].startswith("model ready"))) < 2:
        assert time.monotonic() < deadline, "both workers never became ready"
        time.sleep(0.1)
    # Which worker takes a connection is up to the kernel: send requests (a new connection each
    # time) until both have answered some, however unevenly a busy machine shares them out.
    body = {"image": data_uri(), "task": "ocr"}
    sent = 0
    deadline = time.monotonic() + 120
    while sent < 20 or len(_instances(logs, lambda line: line.get("path") == "/inference")) < 2:
        assert time.monotonic() < deadline, f"after {sent} requests, not both workers had answered"
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/inference", json=body).status_code == 200
        sent += 1
    labels = {"model_type": "multimodal", "task": "ocr", "status": "success"}
    for _ in range(4):
        with httpx.Client(base_url=url, timeout=60) as client:
            text = client.get("/metrics").text
        assert metric_value(text, "model_inference_requests_total", **labels) == sent
        # histograms too: every request observed once, in whichever worker answered it
        timed = {"model_type": "multimodal", "task": "ocr", "quantization": "fp32"}
        assert metric_value(text, "model_inference_duration_seconds_count", **timed) == sent
        assert metric_value(text, "model_inference_duration_seconds_bucket", **timed, le="+Inf") == sent
        assert (
            metric_value(text, "model_load_duration_seconds", model_type="multimodal", quantization="fp32")
            > 0
        )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM)


@pytest.mark.slow
def test_workers_share_one_rate_limit_through_redis(
    model_dir: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """``--workers 2`` with ``MOBILE_MM_REDIS_URL``: a key's burst is one for the pod, not one per
    worker. Requests go on new connections until both workers have answered some (the kernel
    picks the worker) and at least 2 x burst + 2 were sent: one worker then took >= burst + 1,
    so buckets of its own per worker would have let at least burst + 1 through."""
    if (why := redis_missing()) is not None:
        pytest.fail(why)
    burst = 3
    db_url = f"sqlite:///{tmp_path / 'keys.db'}"  # one machine: its workers may share SQLite
    db = Database(db_url)
    key, _ = create_key(db, "dave", "free")
    db.dispose()
    with RedisServer(tmp_path / "redis") as redis_server:
        proc, url = _serve(
            model_dir,
            tmp_path,
            "--workers",
            "2",
            MOBILE_MM_AUTH="required",
            MOBILE_MM_DATABASE_URL=db_url,
            MOBILE_MM_REDIS_URL=redis_server.url,
            MOBILE_MM_RATE_LIMIT_FREE_BURST=str(burst),
            MOBILE_MM_RATE_LIMIT_FREE_PER_MINUTE="0.6",  # one token per 100 s: none comes back
            MOBILE_MM_LOG_SAMPLE_RATIO="1",
        )
        processes.append(proc)
        logs = tmp_path / "logs"
        deadline = time.monotonic() + 120
        while len(_instances(logs, lambda line: line["message"].startswith("model ready"))) < 2:
            assert time.monotonic() < deadline, "both workers never became ready"
            time.sleep(0.1)
        body = {"image": data_uri(), "task": "ocr"}
        statuses: list[int] = []
        deadline = time.monotonic() + 120
        while len(statuses) < 2 * burst + 2 or len(_instances(logs, _answered_inference)) < 2:
            assert time.monotonic() < deadline, f"after {statuses}, not both workers had answered"
            with httpx.Client(base_url=url, timeout=60) as client:
                statuses.append(client.post("/inference", json=body, headers={"X-API-Key": key}).status_code)
        assert statuses[:burst] == [200] * burst and set(statuses[burst:]) == {429}, statuses
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)


def _answered_inference(line: dict[str, Any]) -> bool:
    return line.get("path") == "/inference" and line.get("status") in (200, 429)


def test_invalid_serve_options_exit_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--quantization", "int3", "--port", "1"],
        env={**os.environ, "MOBILE_MM_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,  # (it imports torch: minutes on a loaded machine)
    )
    assert result.returncode != 0
    assert "invalid serve options" in result.stderr and "quantization" in result.stderr


def test_multiprocess_dir_is_emptied_of_stale_metrics_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobile_multimodal.serving.server import prepare_multiprocess_dir
    from mobile_multimodal.settings import Settings

    target = tmp_path / "mp"
    target.mkdir()
    (target / "counter_123.db").write_bytes(b"stale")
    (target / "keep.txt").write_text("operator's file")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(target))
    assert prepare_multiprocess_dir(Settings(data_dir=tmp_path)) == target
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
