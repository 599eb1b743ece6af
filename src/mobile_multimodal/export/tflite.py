"""TFLite / LiteRT ``.tflite`` writer (Android), an optional extra: ``pip install '.[tflite]'``.

litert-torch converts each graph (``litert_torch.convert``) and the LiteRT interpreter
(``ai-edge-litert``) runs it again for validation. Its dependencies are large (~2 GB: jax,
transformers, ...), so it is in no other extra and ``writer_for("tflite")`` names the pip
command when it is missing.

LiteRT's weight schemes are its own and cannot take our codes: int8 per channel (weight-only)
and int4 in blocks of 32 input columns with int8 dynamic-range activations, both re-rounded by
litert-torch from the float weights it is given — here our dequantized weights:

- ``int8``: litert-torch's int8 weight-only channel-wise recipe;
- ``int4`` and ``int2`` are refused: its only int4 recipes are blockwise (32..256 columns, the
  whole model at once) and our MLP down-projections are 400 columns wide, which litert-torch
  rejects ("not divisible by block size 32"); LiteRT has no 2-bit type at all.

Inputs are static; int64 inputs become int32 (litert-torch's default), so the runner casts.

Example::

    writer = writer_for("tflite")        # EXPORT_DEPENDENCY_MISSING without the extra
    writer.write(model, build_graphs(model), "int8", Path("bundle"))
    writer.open(Path("bundle"), bundle).run("ocr", {"line_image": line})["log_probs"]
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mobile_multimodal.errors import ExportError, ExportErrorCode, conversion_errors
from mobile_multimodal.export.formats import package_version
from mobile_multimodal.export.validate import ACCURACY_TOLERANCE, MAX_ABS_DIFF_LIMIT

if TYPE_CHECKING:
    from mobile_multimodal.export.graphs import GraphSpec
    from mobile_multimodal.model.llm import MobileMultiModalLLM

QUANTIZED_ACCURACY_TOLERANCE = 0.05  # relative; the quantization-loss alert threshold (DESIGN.md)
QUANTIZED_MAX_ABS_DIFF = 1.0  # int8: our weights re-rounded per channel by litert-torch


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """litert-torch and its jax/transformers imports warn about their own internals."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


SUPPORTED = ("fp32", "int8")
UNSUPPORTED_REASON = (
    "TFLite export supports fp32 and int8: LiteRT's int4 weights come only in blocks of 32+ input "
    "columns for the whole model (litert-torch's recipes), this model's MLP down-projections are "
    "400 columns wide, and LiteRT has no 2-bit type; export {q} as onnx or executorch instead"
)


def quant_config(quantization: str) -> Any:
    """litert-torch's quantization recipe for ``quantization`` (None: float32)."""
    if quantization not in SUPPORTED:
        raise ExportError(ExportErrorCode.EXPORT_CONVERSION_FAILED, UNSUPPORTED_REASON.format(q=quantization))
    if quantization == "fp32":
        return None
    from litert_torch.generative.quantize import quant_attrs, quant_recipes

    return quant_recipes.full_weight_only_recipe(
        weight_dtype=quant_attrs.Dtype.INT8, granularity=quant_attrs.Granularity.CHANNELWISE
    )


class TFLiteGraphRunner:
    """Runs ``.tflite`` graphs in the LiteRT interpreter. litert-torch names a signature's
    inputs ``args_<i>`` and outputs ``output_<i>``, in the graph's order."""

    def __init__(self, out: Path, graphs: dict[str, dict[str, Any]]) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._runners: dict[str, Any] = {}
        self._inputs: dict[str, list[str]] = {}
        self._outputs: dict[str, list[str]] = {}
        for name, g in graphs.items():
            interpreter = Interpreter(model_path=str(out / g["file"]))
            self._runners[name] = interpreter.get_signature_runner()
            self._inputs[name] = [str(e["name"]) for e in g["inputs"]]
            self._outputs[name] = [str(e["name"]) for e in g["outputs"]]

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self._runners[graph]
        details = runner.get_input_details()
        feed = {}
        for i, name in enumerate(self._inputs[graph]):
            key = f"args_{i}"
            feed[key] = np.ascontiguousarray(inputs[name]).astype(details[key]["dtype"])
        result = runner(**feed)
        ordered = sorted(result, key=lambda k: int(k.rsplit("_", 1)[-1]))
        return {n: np.asarray(result[k]) for n, k in zip(self._outputs[graph], ordered, strict=True)}


class TFLiteWriter:
    name = "tflite"
    runtime = "litert"
    prefill = False  # no prompt-length axis here: its apps feed the prompt through decoder_step
    extension = ".tflite"
    quantizations = SUPPORTED  # the export benchmark runs these cells only
    install_hint = "pip install 'mobile-multimodal-llm[tflite]' (litert-torch, ai-edge-litert; ~2 GB)"

    def toolchain(self) -> dict[str, str | None]:
        return {
            "litert-torch": package_version("litert-torch"),
            "ai-edge-litert": package_version("ai-edge-litert"),
        }

    def tolerance(self, quantization: str) -> tuple[float, float]:
        """fp32: the shared bounds; quantized: LiteRT re-rounds our weights in its own scheme."""
        if quantization == "fp32":
            return ACCURACY_TOLERANCE, MAX_ABS_DIFF_LIMIT
        return QUANTIZED_ACCURACY_TOLERANCE, QUANTIZED_MAX_ABS_DIFF

    def write(
        self, model: MobileMultiModalLLM, graphs: list[GraphSpec], quantization: str, out: Path
    ) -> list[Path]:
        config = quant_config(quantization)  # refuses int4/int2 before any conversion
        files = []
        for spec in graphs:
            path = out / f"{spec.name}{self.extension}"
            with (
                conversion_errors(f"TFLite conversion of graph {spec.name!r}"),
                quiet_litert(),
                torch.no_grad(),
            ):
                import litert_torch

                edge = litert_torch.convert(spec.module.eval(), spec.example_inputs, quant_config=config)
                edge.export(str(path))
            files.append(path)
        return files

    def open(self, out: Path, bundle: dict[str, Any]) -> TFLiteGraphRunner | str:
        with quiet_litert():
            return TFLiteGraphRunner(out, bundle["graphs"])

    def inspect(self, out: Path, bundle: dict[str, Any]) -> dict[str, Any]:
        """Per graph: file size and the bytes of all its tensors (weights and activations) by
        dtype, as the interpreter allocates them."""
        from ai_edge_litert.interpreter import Interpreter

        report: dict[str, Any] = {}
        for name, g in bundle["graphs"].items():
            path = out / g["file"]
            interpreter = Interpreter(model_path=str(path))
            by_dtype: dict[str, int] = {}
            for tensor in interpreter.get_tensor_details():
                dtype = np.dtype(tensor["dtype"]).name
                elements = int(np.prod(tensor["shape"])) if len(tensor["shape"]) else 1
                by_dtype[dtype] = by_dtype.get(dtype, 0) + elements * np.dtype(tensor["dtype"]).itemsize
            report[name] = {"bytes": path.stat().st_size, "tensor_bytes_by_dtype": by_dtype}
        return {"graphs": report}


WRITER = TFLiteWriter()
