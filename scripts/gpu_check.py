"""The GPU check to run once on a machine with an NVIDIA GPU: serve on cuda and verify what runs there.

It starts ``mobile-mm serve --device cuda`` (INT2 bundled model, so the fp32 reference also goes
to the GPU), waits for /ready, sends one request per task, waits for the start-up canary, and
checks from the server's own /metrics and /health that: the model answered every task,
``gpu_memory_usage_bytes{memory_type="allocated"}`` is above the weights' size, the GPU memory
alerts' inputs exist (``used`` and ``total`` per GPU: GPUMemoryHigh fires above 95% of it,
GPUOutOfMemory above 99%) and are below GPUMemoryHigh's threshold, the canary ran
with scores equal to the CPU release's baseline (within 2%), the shadow compared requests. It
prints one JSON object and exits 0 when every check passed, 1 when one failed, 2 when the server
could not start (on a machine without a GPU: the load fails with "no CUDA device", by design).

Usage::

    .venv/bin/python scripts/gpu_check.py            # on the GPU machine
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


GPU_MEMORY_HIGH = 0.95  # monitoring/alerts.yml GPUMemoryHigh: used / total above this


def gpu_memory_ratios(text: str) -> dict[str, float]:
    """gpu_id -> used / total from a /metrics text: what GPUMemoryHigh and GPUOutOfMemory compute
    (only GPUs with both series, as the alerts' division matches)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gpu_memory_usage_bytes":
                values[(sample.labels["gpu_id"], sample.labels["memory_type"])] = sample.value
    return {
        gpu: values[(gpu, "used")] / values[(gpu, "total")]
        for gpu, kind in values
        if kind == "total" and values[(gpu, "total")] > 0 and (gpu, "used") in values
    }


def main() -> int:
    from PIL import Image

    port = _port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MOBILE_MM_AUTH": "disabled", "MOBILE_MM_SHADOW_SAMPLE_RATE": "1"}
    with tempfile.TemporaryDirectory() as data_dir:
        env["MOBILE_MM_DATA_DIR"] = data_dir
        cmd = [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--quantization", "int2", "--device", "cuda"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return _check(url, proc, Image)
        finally:
            proc.terminate()
            proc.wait(60)


def _check(url: str, proc: subprocess.Popen[bytes], image_module: Any) -> int:
    deadline = time.monotonic() + 300
    while not (_alive(url) and _get(url + "/ready")[0] == 200):
        health = json.loads(_get(url + "/health")[1]) if _alive(url) else None
        failed = health is not None and any(e.get("code") == "MODEL_LOAD_FAILED" for e in health["errors"])
        if failed or proc.poll() is not None or time.monotonic() > deadline:
            print(json.dumps({"started": False, "health": health}))
            return 2
        time.sleep(0.5)
    buf = io.BytesIO()
    image_module.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    answers = {
        task: _post(url + "/inference", {"image": image, "task": task, **extra})["result"]
        for task, extra in (
            ("captioning", {}),
            ("ocr", {}),
            ("vqa", {"question": "what color is the square ?"}),
            ("retrieval", {"texts": ["a large red square", "a small blue circle"]}),
        )
    }
    text = ""
    while time.monotonic() < deadline:
        text = _get(url + "/metrics")[1]
        if _metric(text, "model_canary_runs_total", status="success") >= 1 and _metric(
            text, "quantization_shadow_comparisons_total"
        ) >= len(answers):
            break
        time.sleep(1)
    held = _metric(text, "model_memory_usage_bytes")
    weights = held - _metric(text, "model_memory_usage_bytes", component="kv_cache_peak")
    ratios = gpu_memory_ratios(text)
    scores = {t: _metric(text, "model_accuracy_score", task=t) for t in answers}
    baseline = {t: _metric(text, "model_accuracy_baseline_score", task=t) for t in answers}
    checks = {
        "every_task_answered": all("confidence" in r for r in answers.values()),
        "gpu_allocated_above_weights": _metric(text, "gpu_memory_usage_bytes", memory_type="allocated")
        > weights
        > 0,
        "gpu_alert_inputs_below_threshold": bool(ratios)
        and all(0 < r < GPU_MEMORY_HIGH for r in ratios.values()),
        "canary_ran": _metric(text, "model_canary_runs_total", status="success") >= 1,
        "canary_matches_cpu_baseline": all(
            abs(scores[t] - baseline[t]) <= 0.02 * max(1.0, baseline[t]) for t in answers
        ),
        "shadow_compared": _metric(text, "quantization_shadow_comparisons_total") >= 1,
    }
    print(
        json.dumps(
            {
                "started": True,
                "checks": checks,
                "answers": answers,
                "scores": scores,
                "baseline": baseline,
                "gpu_used_over_total": ratios,
            }
        )
    )
    return 0 if all(checks.values()) else 1


def _alive(url: str) -> bool:
    try:
        return _get(url + "/alive")[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
