"""Shared fixtures: tiny models that build in milliseconds, and the bundled model when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, bundled_model_dir

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model() -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: MobileMultiModalLLM) -> Path:
    return tiny_model.save(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def bundled_model() -> MobileMultiModalLLM:
    if not (bundled_model_dir() / "manifest.json").exists():
        pytest.fail("the bundled model is missing from src/mobile_multimodal/weights/default")
    return MobileMultiModalLLM.from_pretrained("default")
