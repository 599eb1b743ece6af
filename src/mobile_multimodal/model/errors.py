"""Errors the model package raises, each with a stable code (used by metrics and HTTP errors)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model could not be loaded. `code` is one of MODEL_NOT_FOUND, MODEL_MANIFEST_INVALID,
    MODEL_INTEGRITY_FAILED, MODEL_WEIGHTS_INVALID, QUANTIZATION_UNAVAILABLE."""

    def __init__(self, message: str, code: str = "MODEL_LOAD_FAILED") -> None:
        super().__init__(message)
        self.code = code
