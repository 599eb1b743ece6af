from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.model_metrics import (
    accuracy_loss,
    primaries,
    record_load_failure,
    record_model,
)

from .conftest import sample


def _report(quantization: str, **primary: float) -> dict[str, Any]:
    return {
        "model": "mobile-multimodal-llm",
        "quantization": quantization,
        "size_bytes": 1,
        "tasks": {task: {"primary": value, "n": 100} for task, value in primary.items()},
    }


@pytest.fixture(scope="module")
def tiny() -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)


def _network_bytes(model: MobileMultiModalLLM) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*model.network.parameters(), *model.network.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def test_memory_per_component_is_measured_from_the_model(tiny: MobileMultiModalLLM, tmp_path: Path) -> None:
    tiny.save(tmp_path / "m", extra_manifest={"eval": _report("fp32", captioning=0.8, ocr=0.9)})
    model = MobileMultiModalLLM.from_pretrained(tmp_path / "m")
    record_model(model, load_seconds=0.25, model_type="mm-test")
    components = model.component_memory_bytes()
    assert {"encoder", "decoder", "ocr_head", "retrieval_head", "embeddings"} <= set(components)
    for name, nbytes in components.items():
        assert sample("model_memory_usage_bytes", {"model_type": "mm-test", "component": name}) == nbytes
    total = sum(
        sample("model_memory_usage_bytes", {"model_type": "mm-test", "component": n}) for n in components
    )
    assert 0.99 * _network_bytes(model) <= total <= _network_bytes(model)
    assert sample("model_load_duration_seconds", {"model_type": "mm-test", "quantization": "fp32"}) == 0.25
    assert (
        sample("model_accuracy_score", {"model_type": "mm-test", "quantization": "fp32", "task": "ocr"})
        == 0.9
    )
    # an fp32 model loses nothing to quantization, by definition
    assert sample("quantization_accuracy_loss", {"quantization_type": "fp32", "task": "captioning"}) == 0.0
    info = {"name": "mobile-multimodal-llm", "quantization": "fp32"}
    assert sample("model_info", {**info, **_info_rest(model)}) == 1.0


def _info_rest(model: MobileMultiModalLLM) -> dict[str, str]:
    weights = next(f for f in model.manifest["files"] if f["path"].endswith(".safetensors"))
    details = model.get_model_info()
    return {
        "version": str(details["version"]),
        "parameters": str(details["parameters"]),
        "size_bytes": str(details["size_bytes"]),
        "weights_sha256": weights["sha256"],
        "runtime": "pytorch",
    }


def test_quantization_loss_against_the_fp32_report_beside_the_variant(
    tiny: MobileMultiModalLLM, tmp_path: Path
) -> None:
    base = tmp_path / "model"
    tiny.save(base, extra_manifest={"eval": _report("fp32", captioning=0.80, ocr=0.90, vqa=0.0)})
    # A quantized variant lives in <model>/int2/ with its own report (see model.resolve_model_dir).
    manifest = {
        "eval": _report("int2", captioning=0.76, ocr=0.855, vqa=0.3),
        "quantization": {"mode": "int2"},
    }
    variant = MobileMultiModalLLM(tiny.network, tiny.tokenizer, manifest, base / "int2", quantization="int2")
    metrics.QUANTIZATION_LOSS.labels("int2", "vqa").set(0.5)  # left by a previously loaded model
    record_model(variant, load_seconds=1.0, model_type="mm-test")
    assert sample(
        "quantization_accuracy_loss", {"quantization_type": "int2", "task": "captioning"}
    ) == pytest.approx(0.05)
    assert sample(
        "model_quantization_accuracy_loss", {"quantization_type": "int2", "task": "ocr"}
    ) == pytest.approx(0.05)
    # vqa's fp32 score is 0: a relative loss is undefined, so no series rather than a division by zero
    vqa = {"quantization_type": "int2", "task": "vqa"}
    assert REGISTRY.get_sample_value("quantization_accuracy_loss", vqa) is None
    assert (
        sample("model_accuracy_score", {"model_type": "mm-test", "quantization": "int2", "task": "ocr"})
        == 0.855
    )


def test_embedded_baseline_report_is_used_when_present(tiny: MobileMultiModalLLM, tmp_path: Path) -> None:
    manifest = {
        "eval": _report("int4", easy_vqa=0.81),
        "quantization": {"mode": "int4", "baseline_eval": _report("fp32", easy_vqa=0.90)},
    }
    variant = MobileMultiModalLLM(
        tiny.network, tiny.tokenizer, manifest, tmp_path / "elsewhere", quantization="int4"
    )
    record_model(variant, load_seconds=1.0, model_type="mm-test")
    assert sample(
        "quantization_accuracy_loss", {"quantization_type": "int4", "task": "easy_vqa"}
    ) == pytest.approx(0.1)


def test_report_parsing() -> None:
    assert primaries(None) == {}
    assert primaries({"tasks": {"ocr": {"primary": 0.5}, "broken": {"cer": 0.1}}}) == {"ocr": 0.5}
    assert accuracy_loss({"ocr": 0.45, "new": 0.3}, {"ocr": 0.5}) == {"ocr": pytest.approx(0.1)}


def test_load_failures_count_by_reason() -> None:
    labels = {"model_type": "mm-test", "reason": "MODEL_CHECKSUM_MISMATCH"}
    before = sample("model_load_failures_total", labels)
    record_load_failure("MODEL_CHECKSUM_MISMATCH", "mm-test")
    record_load_failure("MODEL_CHECKSUM_MISMATCH", "mm-test")
    assert sample("model_load_failures_total", labels) == before + 2
