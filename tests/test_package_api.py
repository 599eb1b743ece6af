"""The public Python API from the package's top (DESIGN.md "Python API"), loaded lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mobile_multimodal
from mobile_multimodal import model


def test_the_model_api_is_importable_from_the_top() -> None:
    from mobile_multimodal import MobileMultiModalLLM, ModelConfig, ModelLoadError, Tokenizer

    assert MobileMultiModalLLM is model.MobileMultiModalLLM
    assert (ModelConfig, ModelLoadError, Tokenizer) == (
        model.ModelConfig,
        model.ModelLoadError,
        model.Tokenizer,
    )
    assert set(mobile_multimodal.__all__) <= set(dir(mobile_multimodal))
    for method in ("from_pretrained", "generate_caption", "extract_text", "answer_question"):
        assert callable(getattr(MobileMultiModalLLM, method))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = mobile_multimodal.NoSuchThing  # type: ignore[attr-defined]


def test_importing_the_package_does_not_import_torch() -> None:
    # the CLI and the settings import the package; torch loads only when the model is used
    code = (
        "import sys, mobile_multimodal; assert 'torch' not in sys.modules, 'torch imported'; "
        "mobile_multimodal.MobileMultiModalLLM; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
