"""mobile-multimodal-llm: a small vision-language model you can train, quantize, export and serve.

The Python API is importable from here; it loads torch on first use, so ``import
mobile_multimodal`` (the CLI, settings, the metrics of a serving worker) stays light.

Example::

    from mobile_multimodal import MobileMultiModalLLM
    m = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    m.generate_caption("scene.png")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("mobile-multimodal-llm")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

SERVICE_NAME = "mobile-multimodal-llm"

if TYPE_CHECKING:
    from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, ModelLoadError, Tokenizer

# name -> the module that defines it, imported on first access (module __getattr__, PEP 562)
_LAZY = {
    "MobileMultiModalLLM": "mobile_multimodal.model",
    "ModelConfig": "mobile_multimodal.model",
    "ModelLoadError": "mobile_multimodal.model",
    "Tokenizer": "mobile_multimodal.model",
}

__all__ = ["SERVICE_NAME", "MobileMultiModalLLM", "ModelConfig", "ModelLoadError", "Tokenizer", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mobile_multimodal' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
