"""Errors the model package raises, each with a stable code (used by metrics and HTTP errors)."""

from __future__ import annotations

from typing import Protocol


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


class _Counter(Protocol):
    def count(self, text: str, stop_after: int | None = None) -> int: ...


def check_question_tokens(tokenizer: _Counter, question: str, limit: int) -> None:
    """Raise PromptTooLongError if ``question`` has more than ``limit`` tokens (counting stops
    one past the limit, so a 100k-word question costs no more than a long one)."""
    n = tokenizer.count(question, stop_after=limit)
    if n > limit:
        raise PromptTooLongError(
            f"the question has more than {limit} tokens (words and ? , :); the limit is {limit} tokens",
            tokens=n,
            limit=limit,
        )
