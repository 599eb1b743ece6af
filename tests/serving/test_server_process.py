"""``mobile-mm serve`` as a real process: SIGTERM draining, and --workers N with multiprocess metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.servers import free_port, wait_http

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig

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
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", timeout_s=90, process=proc)
    except RuntimeError as exc:  # it exited: show why
        raise RuntimeError(
            f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        ) from exc
    except TimeoutError:
        proc.kill()
        raise
    return proc, url


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(
    model_dir: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # A long batch wait keeps the requests queued when the signal arrives.
    proc, url = _serve(model_dir, tmp_path, MOBILE_MM_MAX_BATCH_WAIT_MS="400", MOBILE_MM_MAX_BATCH_SIZE="16")
    processes.append(proc)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {"image": data_uri(), "task": "ocr"}
            requests = [asyncio.create_task(client.post("/inference", json=body)) for _ in range(10)]
            await asyncio.sleep(0.15)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*requests)

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    # uvicorn re-raises the signal once the drain is done, so the exit reads "terminated by SIGTERM".
    assert proc.wait(30) == -signal.SIGTERM
    with pytest.raises(httpx.TransportError):  # and it no longer accepts connections
        httpx.get(url + "/alive", timeout=2)


@pytest.mark.slow
def test_workers_share_one_view_of_the_metrics(
    model_dir: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, url = _serve(model_dir, tmp_path, "--workers", "2", MOBILE_MM_LOG_SAMPLE_RATIO="1")
    processes.append(proc)
    # Both workers must be up: the first /ready answered by one of them says nothing of the other.
    time.sleep(1.0)
    for _ in range(50):
        if all(httpx.get(url + "/ready", timeout=5).status_code == 200 for _ in range(6)):
            break
        time.sleep(0.2)
    body = {"image": data_uri(), "task": "ocr"}
    for _ in range(20):
        with httpx.Client(base_url=url, timeout=30) as client:  # a new connection each time
            assert client.post("/inference", json=body).status_code == 200
    labels = {"model_type": "multimodal", "task": "ocr", "status": "success"}
    for _ in range(4):
        with httpx.Client(base_url=url, timeout=30) as client:
            text = client.get("/metrics").text
        assert metric_value(text, "model_inference_requests_total", **labels) == 20
        assert (
            metric_value(text, "model_load_duration_seconds", model_type="multimodal", quantization="fp32")
            > 0
        )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM)
    # Which worker answered: each request's log line names its process (instance_id = host-pid);
    # /alive no longer tells callers the pid.
    lines = [json.loads(line) for f in (tmp_path / "logs").glob("application.log*") for line in f.open()]
    workers = {line["instance_id"] for line in lines if line.get("path") == "/inference"}
    assert len(workers) == 2, f"requests reached workers {workers}"


def test_invalid_serve_options_exit_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--quantization", "int3", "--port", "1"],
        env={**os.environ, "MOBILE_MM_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
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
