"""The model load as a trace (read, verify, build, warm_up), the memory it reports, and the device.

No GPU on the machines these run on: the CPU path is served and checked; asking for cuda without
one must fail the load with a message saying so (never a silent CPU fallback).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from mobile_multimodal.cli import app as cli
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.engine import ModelLoadFailure, default_loader, resolve_device

from .conftest import LiveServer, data_uri, metric_value, png_bytes


def data_uri_image() -> Any:
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(png_bytes()))


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def _spans(exporter: InMemorySpanExporter, name: str, timeout_s: float = 60) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = [s for s in exporter.get_finished_spans() if s.name == name]
        if spans:
            return spans
        time.sleep(0.05)
    raise AssertionError(f"no {name} span within {timeout_s} s")


def test_the_model_load_is_one_trace_with_its_stages(live_server: Callable[..., LiveServer]) -> None:
    exporter = InMemorySpanExporter()
    server = live_server(loader=default_loader, model="default", app_kwargs={"span_exporter": exporter})
    [load] = _spans(exporter, "model_load")
    assert load.parent is None  # a root: not part of any request's trace
    assert load.attributes is not None and load.attributes["model.device"] == "cpu"
    children = [
        s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == load.context.span_id
    ]
    assert [s.name for s in sorted(children, key=lambda s: s.start_time or 0)] == [
        "read",
        "verify",
        "build",
        "warm_up",
    ]
    with server.client() as client:
        text = client.get("/metrics").text
    # the load time exported is the whole load, warm-up included
    seconds = metric_value(text, "model_load_duration_seconds", quantization="fp32")
    assert load.end_time is not None and load.start_time is not None
    assert seconds > 0 and seconds >= (load.end_time - load.start_time) / 1e9 * 0.5
    # memory: the weights by component, and the KV cache the warm-up's full batch really held
    # (this server's model_type only: the registry is per process, and an earlier test may have
    # served another model under another model_type)
    model_type = server.settings.model_type
    model = MobileMultiModalLLM.from_pretrained("default")
    for component, nbytes in model.component_memory_bytes().items():
        value = metric_value(text, "model_memory_usage_bytes", model_type=model_type, component=component)
        assert value == nbytes
    # K and V of every decoder layer (self- and cross-attention) at the warm-up's longest step:
    # at least the cross-attention's, for a batch of max_batch_size images
    peak = metric_value(text, "model_memory_usage_bytes", model_type=model_type, component="kv_cache_peak")
    with torch.inference_mode():
        image_tokens, _ = model.network.encode_images(model._scenes([data_uri_image()]))
    cross = (
        2 * len(model.network.decoder.layers()) * image_tokens.numel() * 4 * server.settings.max_batch_size
    )
    assert cross < peak < 10 * cross
    # ... and it follows the requests' decodes, not only the load's (and the canary's)
    from mobile_multimodal.observability import metrics

    metrics.MODEL_MEMORY.labels(model_type, "kv_cache_peak").set(0)
    with server.client() as client:
        assert client.post("/inference", json={"image": data_uri(), "task": "captioning"}).status_code == 200
        text = client.get("/metrics").text
    held = server.app.state.engine.model.network.decoder.peak_cache_bytes
    assert held >= peak
    assert (
        metric_value(text, "model_memory_usage_bytes", model_type=model_type, component="kv_cache_peak")
        == held
    )


def test_a_tampered_file_fails_the_verify_stage(
    live_server: Callable[..., LiveServer], tmp_path: Any
) -> None:
    import shutil

    from mobile_multimodal.model import bundled_model_dir

    model_dir = shutil.copytree(
        bundled_model_dir(), tmp_path / "model", ignore=shutil.ignore_patterns("int*")
    )
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    exporter = InMemorySpanExporter()
    live_server(
        loader=default_loader, model=str(model_dir), ready=False, app_kwargs={"span_exporter": exporter}
    )
    [verify] = _spans(exporter, "verify")
    assert not verify.status.is_ok
    assert not [s for s in exporter.get_finished_spans() if s.name == "build"]


def test_device_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@no_gpu
def test_cuda_without_a_gpu_fails_the_load_and_says_why(live_server: Callable[..., LiveServer]) -> None:
    with pytest.raises(ModelLoadFailure, match="no CUDA device"):
        resolve_device("cuda")
    server = live_server(loader=default_loader, model="default", device="cuda", ready=False)
    deadline = time.monotonic() + 60
    with server.client() as client:
        while server.app.state.engine.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").status_code == 503
        health = client.get("/health")
        assert health.status_code == 503
        assert "no CUDA device" in health.text
        refused = client.post("/inference", json={"image": data_uri(), "task": "captioning"})
        assert refused.status_code == 503 and "no CUDA device" in refused.json()["error"]["message"]


def test_serve_takes_a_device_option(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEVICE", "HOST", "PORT", "MODEL", "QUANTIZATION", "WORKERS"):  # serve writes them
        monkeypatch.setenv(f"MOBILE_MM_{name}", "")
        monkeypatch.delenv(f"MOBILE_MM_{name}")
    runner = CliRunner()
    assert "--device" in runner.invoke(cli, ["serve", "--help"]).output
    refused = runner.invoke(cli, ["serve", "--device", "tpu", "--port", "1"])
    assert refused.exit_code != 0
    assert "device" in (refused.output + str(refused.exception))


@no_gpu
def test_the_prepared_gpu_check_refuses_clearly_without_a_gpu() -> None:
    """scripts/gpu_check.py is what a GPU machine runs; here it must stop at the load, saying why."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["started"] is False
    assert "no CUDA device" in json.dumps(report["health"])


def test_the_gpu_check_reads_the_gpu_memory_alerts_inputs_as_the_alerts_do() -> None:
    """used / total per GPU from the exposition format, as GPUMemoryHigh divides them; the alert's
    threshold in alerts.yml is the one the check compares with."""
    import importlib.util
    from pathlib import Path

    import yaml
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gpu_check", repo / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    registry = CollectorRegistry()
    gauge = Gauge("gpu_memory_usage_bytes", "GPU memory", ["gpu_id", "memory_type"], registry=registry)
    for gpu, used, total in (("0", 30.0, 80.0), ("1", 79.0, 80.0)):
        gauge.labels(gpu, "used").set(used)
        gauge.labels(gpu, "total").set(total)
        gauge.labels(gpu, "allocated").set(used / 2)
    gauge.labels("2", "allocated").set(1.0)  # no used/total: the alerts' division has no result
    ratios = gpu_check.gpu_memory_ratios(generate_latest(registry).decode())
    assert ratios == {"0": 30.0 / 80.0, "1": 79.0 / 80.0}
    rules = yaml.safe_load((repo / "monitoring" / "alerts.yml").read_text())
    [high] = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "GPUMemoryHigh"]
    assert f"> {gpu_check.GPU_MEMORY_HIGH}" in high["expr"]
    assert 'memory_type="used"' in high["expr"] and 'memory_type="total"' in high["expr"]
