"""The serving benchmark runs end to end (real server, real wrk) and writes its report and plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (scripts/install_system_deps.sh)"
)
def test_serving_benchmark_end_to_end(tmp_path: Path) -> None:
    from benchmarks.serving.run import main

    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    out = tmp_path / "out"
    result = main(
        [
            "--model",
            str(model_dir),
            "--quantization",
            "fp32",
            "--duration",
            "1",
            "--repeats",
            "1",
            "--model-iters",
            "5",
            "--max-tokens",
            "4",
            "--out",
            str(out),
        ]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == result["summary"]
    for arm in ("batching", "no_batching"):
        for c in ("1", "8", "32"):
            run = saved["http"][arm][c]["runs"][0]
            assert run["requests"] > 0 and run["non_2xx"] == 0 and run["socket_errors"] == 0
    # batching off never forms a batch of more than one; batching on does under concurrency 32
    assert set(saved["http"]["no_batching"]["32"]["batches_by_size"]) <= {"1"} or all(
        v == 0 for k, v in saved["http"]["no_batching"]["32"]["batches_by_size"].items() if k != "1"
    )
    assert any(v > 0 for k, v in saved["http"]["batching"]["32"]["batches_by_size"].items() if k != "1")
    assert "| target | measured | met |" in (out / "results.md").read_text()
    for plot in ("latency.png", "throughput.png", "model_batching.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
