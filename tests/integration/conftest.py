"""Fixtures for tests that run the real app against real monitoring components on 127.0.0.1.

The model served is the bundled one when it exists (src/mobile_multimodal/weights/default), else
a tiny randomly initialised model saved by the test with an eval report in its manifest, so the
telemetry pipeline is exercised end to end either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, bundled_model_dir

TINY_EVAL: dict[str, Any] = {
    "model": "mobile-multimodal-llm",
    "quantization": "fp32",
    "size_bytes": 0,
    "tasks": {
        "captioning": {"primary": 0.42, "n": 10},
        "ocr": {"primary": 0.61, "n": 10},
        "vqa": {"primary": 0.55, "n": 10},
    },
}


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundled = bundled_model_dir()
    if (bundled / "manifest.json").exists():
        return bundled
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)
    return model.save(tmp_path_factory.mktemp("served-model"), extra_manifest={"eval": TINY_EVAL})


@pytest.fixture(scope="session")
def served_model(served_model_dir: Path) -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_pretrained(served_model_dir)
