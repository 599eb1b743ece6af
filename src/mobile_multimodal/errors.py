"""Error codes shared below the service layer (DESIGN.md "Layers": shared basics).

Packages that sit under ``serving`` (export today) cannot import ``serving/errors.py``; their
codes live here, one enum per concern, and ``serving`` maps them onto HTTP statuses where a
route surfaces them. Every code is UPPER_SNAKE and stable: metrics, logs and tests use it.

Example::

    raise ExportError(ExportErrorCode.UNSUPPORTED_PLATFORM_FORMAT, "coreml runs on ios only")
"""

from __future__ import annotations

from enum import StrEnum


class ExportErrorCode(StrEnum):
    """Why a mobile export failed (``mobile-mm export``, ``POST /export``)."""

    # --- the request: refused before any work -------------------------------------------------
    UNKNOWN_PLATFORM = "UNKNOWN_PLATFORM"
    UNKNOWN_FORMAT = "UNKNOWN_FORMAT"
    UNSUPPORTED_PLATFORM_FORMAT = "UNSUPPORTED_PLATFORM_FORMAT"  # e.g. coreml for android
    UNKNOWN_QUANTIZATION = "UNKNOWN_QUANTIZATION"
    EXPORT_OUTPUT_EXISTS = "EXPORT_OUTPUT_EXISTS"  # --out is a non-empty directory
    # --- the environment ------------------------------------------------------------------------
    EXPORT_DEPENDENCY_MISSING = "EXPORT_DEPENDENCY_MISSING"  # the message names the pip command
    EXPORT_OUTPUT_UNWRITABLE = "EXPORT_OUTPUT_UNWRITABLE"  # read-only or permission denied
    EXPORT_DISK_FULL = "EXPORT_DISK_FULL"
    # --- the work ---------------------------------------------------------------------------------
    EXPORT_MODEL_INVALID = "EXPORT_MODEL_INVALID"  # the model (or its quantized variant) did not load
    EXPORT_CONVERSION_FAILED = "EXPORT_CONVERSION_FAILED"  # the toolchain rejected a graph
    EXPORT_VALIDATION_FAILED = "EXPORT_VALIDATION_FAILED"  # the artifact disagrees with PyTorch
    EXPORT_INTERRUPTED = "EXPORT_INTERRUPTED"  # Ctrl-C / SIGTERM during the export
    # --- POST /export jobs (the child process that runs the export) ------------------------------
    EXPORT_TIMEOUT = "EXPORT_TIMEOUT"  # ran past MOBILE_MM_EXPORT_TIMEOUT_S and was stopped
    EXPORT_PROCESS_FAILED = "EXPORT_PROCESS_FAILED"  # died without recording an outcome (killed, OOM)


class ExportError(RuntimeError):
    """An export that did not produce a bundle: a code and a message a user can act on."""

    def __init__(self, code: ExportErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
