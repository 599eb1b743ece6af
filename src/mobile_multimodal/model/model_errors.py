"""Errors the model package raises, each with a stable code (used by metrics and HTTP errors)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model could not be loaded. `code` is one of MODEL_NOT_FOUND, MODEL_MANIFEST_INVALID,
    MODEL_INTEGRITY_FAILED, MODEL_WEIGHTS_INVALID, QUANTIZATION_UNAVAILABLE."""

    def __init__(self, message: str, code: str = "MODEL_LOAD_FAILED") -> None:
        super().__init__(message)
        self.code = code


class PromptTooLongError(ValueError):
    """A prompt, question or text has more tokens than the model's context leaves room for.

    A ValueError, so callers that validate input catch it as such; ``tokens`` and ``limit`` let a
    service name both in its answer."""

    code = "PROMPT_TOO_LONG"

    def __init__(self, message: str, *, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit
