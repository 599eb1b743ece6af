"""Platforms, formats and the writer of each format.

A format writer turns the graphs of ``graphs.build_graphs`` into files and opens them again in
the format's own runtime for validation. Writers are found by name (``writer_for``); each lives
in its own module and imports its toolchain lazily, so a missing optional toolchain costs
nothing until that format is asked for, and then fails with the pip command that installs it.

Example::

    fmt = resolve_format("android", None)          # 'onnx', the platform's default
    writer = writer_for(fmt)                       # raises ExportError if its toolchain is missing
    files = writer.write(model, graphs, "int2", Path("bundle"))
    runner = writer.open(Path("bundle"), bundle)   # a GraphRunner, or why it cannot run here
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mobile_multimodal.errors import ExportError, ExportErrorCode

if TYPE_CHECKING:
    from mobile_multimodal.export.graphs import GraphSpec
    from mobile_multimodal.model.llm import MobileMultiModalLLM

PLATFORMS = ("android", "ios")
FORMATS = ("onnx", "executorch", "coreml", "tflite")
QUANTIZATIONS = ("fp32", "int8", "int4", "int2")
PLATFORM_FORMATS: dict[str, tuple[str, ...]] = {
    "android": ("onnx", "executorch", "tflite"),
    "ios": ("coreml", "onnx", "executorch"),
}
DEFAULT_FORMAT = {"android": "onnx", "ios": "coreml"}
# formats whose toolchain is an optional extra (not in the default install): `export check`
# reports them missing without failing, unless asked for by name
OPTIONAL_FORMATS = ("tflite",)

# format -> "module:attribute" of its writer (a FormatWriter instance)
WRITERS: dict[str, str] = {
    "onnx": "mobile_multimodal.export.onnx:WRITER",
    "executorch": "mobile_multimodal.export.executorch:WRITER",
    "coreml": "mobile_multimodal.export.coreml:WRITER",
    "tflite": "mobile_multimodal.export.tflite:WRITER",
}


class GraphRunner(Protocol):
    """Executes the written graphs in the format's runtime."""

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class FormatWriter(Protocol):
    name: str  # "onnx"
    runtime: str  # "onnxruntime", "executorch", "coremltools", "litert"
    # whether the format's graphs take a prompt of any length: then the bundle also carries the
    # optional 'prefill' graph (graphs.PrefillGraph), which needs it
    prefill: bool
    # optional: the pip command that installs the toolchain, quoted by EXPORT_DEPENDENCY_MISSING
    # (default: "pip install <the missing packages>")

    def toolchain(self) -> dict[str, str | None]:
        """package -> installed version (None: missing); every package the writer needs."""
        ...

    def write(
        self, model: MobileMultiModalLLM, graphs: list[GraphSpec], quantization: str, out: Path
    ) -> list[Path]:
        """Write the graph files under ``out`` and return them: one file (or package directory)
        per graph, named ``<graph name>.<ext>`` (``bundle.json`` names each graph's file by that
        stem), plus any side files (external weights)."""
        ...

    def open(self, out: Path, bundle: dict[str, Any]) -> GraphRunner | str:
        """A runner over the written graphs, or the reason it cannot run here (Core ML on Linux)."""
        ...

    def inspect(self, out: Path, bundle: dict[str, Any]) -> dict[str, Any]:
        """Structural checks for formats that cannot execute (e.g. compressed weight sizes)."""
        ...


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolve_format(platform: str, fmt: str | None) -> str:
    """The format to export for ``platform`` (its default when ``fmt`` is None); refuses a pair
    that makes no sense (Core ML for Android) before any work is done."""
    if platform not in PLATFORMS:
        raise ExportError(
            ExportErrorCode.UNKNOWN_PLATFORM,
            f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}",
        )
    if fmt is None:
        return DEFAULT_FORMAT[platform]
    if fmt not in FORMATS:
        raise ExportError(
            ExportErrorCode.UNKNOWN_FORMAT, f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}"
        )
    if fmt not in PLATFORM_FORMATS[platform]:
        others = [p for p in PLATFORMS if fmt in PLATFORM_FORMATS[p]]
        raise ExportError(
            ExportErrorCode.UNSUPPORTED_PLATFORM_FORMAT,
            f"{fmt} is not a format for {platform} (it runs on {', '.join(others)}); "
            f"for {platform} choose one of {', '.join(PLATFORM_FORMATS[platform])}",
        )
    return fmt


def check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ExportError(
            ExportErrorCode.UNKNOWN_QUANTIZATION,
            f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}",
        )


def load_writer(fmt: str) -> FormatWriter:
    """The writer object of ``fmt`` without checking its toolchain."""
    if fmt not in FORMATS:
        raise ExportError(
            ExportErrorCode.UNKNOWN_FORMAT, f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}"
        )
    target = WRITERS.get(fmt)
    if target is None:
        raise ExportError(
            ExportErrorCode.EXPORT_DEPENDENCY_MISSING, f"no writer for {fmt} is installed in this build"
        )
    module_name, attr = target.split(":")
    writer: FormatWriter = getattr(importlib.import_module(module_name), attr)
    return writer


def writer_for(fmt: str) -> FormatWriter:
    """The writer of ``fmt``, its toolchain checked: a missing package raises
    ExportError(EXPORT_DEPENDENCY_MISSING) whose message is the pip command to run."""
    writer = load_writer(fmt)
    missing = sorted(pkg for pkg, version in writer.toolchain().items() if version is None)
    if missing:
        raise ExportError(
            ExportErrorCode.EXPORT_DEPENDENCY_MISSING,
            f"the {fmt} export needs {', '.join(missing)}, which is not installed; run: "
            + getattr(writer, "install_hint", f"pip install {' '.join(missing)}"),
        )
    return writer
