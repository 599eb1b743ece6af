"""Core ML ``.mlpackage`` writer (iOS), with our own quantized weights as Core ML compression.

Each graph goes ``torch.export`` -> ``coremltools.convert`` (ML program, iOS 18, float32
compute) -> the float weight constants that came from packed weights are replaced by Core ML's
iOS 18 compression ops built from our codes (``coreml_weights.py``), so the package decompresses
to exactly the weights our PyTorch model computes with:

- INT8 and INT4 layers: ``constexpr_blockwise_shift_scale`` over uint8 / uint4 codes, one
  (scale, zero point) per group of 80 input columns (per output channel at INT8): Core ML's
  block-wise linear quantization, our groups as its blocks;
- INT2 layers: 2-bit palettization (``constexpr_lut_to_dense``, uint2 indices = our codes, a
  four-entry table 0..3) feeding the same per-group scale and zero point.

Core ML runs only on Apple platforms: on Linux ``open()`` returns the reason, and validation
is structural (``inspect()``): inputs and outputs against ``bundle.json``, the program's ops,
and what the compressed weights take in ``weight.bin`` (bits per weight by kind).

Example::

    writer = writer_for("coreml")
    writer.write(model, build_graphs(model), "int2", Path("bundle"))
    writer.inspect(Path("bundle"), bundle)["compressed"]["2"]["code_bits_per_weight"]   # 2.0
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mobile_multimodal.errors import ExportError, ExportErrorCode, conversion_errors
from mobile_multimodal.export.coreml_weights import compress_program, weight_report
from mobile_multimodal.export.formats import package_version

if TYPE_CHECKING:
    from mobile_multimodal.export.graphs import GraphSpec
    from mobile_multimodal.model.llm import MobileMultiModalLLM

# the code width a quantized export must contain (INT2 and INT4 models keep 8-bit I/O layers too)
EXPECTED_CODE_WIDTH = {"int8": "8", "int4": "4", "int2": "2"}
WEIGHTS_DIR = Path("Data/com.apple.CoreML/weights")
NOT_ON_APPLE = (
    "Core ML models execute only on macOS/iOS (coremltools' predict needs Apple's Core ML "
    "framework); on {system} the package is validated structurally instead"
)


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """coremltools warns on import and conversion about versions it has not tested (torch,
    scikit-learn) and its missing macOS-only native module; none of that is ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def convert_graph(spec: GraphSpec) -> Any:
    """``spec`` as a Core ML model (not loaded: conversion needs no Core ML runtime) with our
    packed weights as Core ML compression; returns the MLModel and the compression counts."""
    import coremltools as ct

    with quiet_coremltools(), torch.no_grad():
        program = torch.export.export(spec.module.eval(), spec.example_inputs).run_decompositions({})
        # no passes yet: the weights must still be the parameters as PyTorch holds them (the
        # default pipeline folds BatchNorm into conv weights, and the match would miss them)
        converted = ct.convert(
            program,
            convert_to="milinternal",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT32,
            pass_pipeline=ct.PassPipeline.EMPTY,
        )
        mil = converted
        stats = compress_program(mil, spec.quantized)
        # the default pipeline would fold our "table -> scale" pair into a per-group table of
        # float16 values: larger (16 bits per entry) and no longer our codes
        pipeline = ct.PassPipeline.DEFAULT
        pipeline.remove_passes(["common::canonicalize_quantized_lut_pattern"])
        model = ct.convert(
            mil,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT32,
            pass_pipeline=pipeline,
            skip_model_load=True,
        )
        model_spec = model.get_spec()
        renames = list(zip(model_spec.description.input, spec.input_names, strict=True)) + list(
            zip(model_spec.description.output, spec.output_names, strict=True)
        )
        for feature, name in renames:
            if feature.name != name:
                ct.utils.rename_feature(model_spec, feature.name, name)
        renamed = ct.models.MLModel(model_spec, weights_dir=model.weights_dir, skip_model_load=True)
    return renamed, stats


def _feature_names(spec: Any) -> tuple[list[str], list[str]]:
    return [f.name for f in spec.description.input], [f.name for f in spec.description.output]


class CoreMLGraphRunner:
    """Runs ``.mlpackage`` graphs with Core ML (macOS only). Integer inputs go in as int32,
    the widest integer type Core ML inputs take."""

    def __init__(self, out: Path, graphs: dict[str, dict[str, Any]]) -> None:
        import coremltools as ct

        with quiet_coremltools():
            self._models = {name: ct.models.MLModel(str(out / g["file"])) for name, g in graphs.items()}

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in inputs.items()}
        return {k: np.asarray(v) for k, v in self._models[graph].predict(feed).items()}


class CoreMLWriter:
    name = "coreml"
    runtime = "coremltools"
    prefill = False  # no prompt-length axis here: its apps feed the prompt through decoder_step
    extension = ".mlpackage"
    install_hint = "pip install 'mobile-multimodal-llm[export]' (coremltools>=9)"

    def toolchain(self) -> dict[str, str | None]:
        return {"coremltools": package_version("coremltools")}

    def write(
        self, model: MobileMultiModalLLM, graphs: list[GraphSpec], quantization: str, out: Path
    ) -> list[Path]:
        files = []
        for spec in graphs:
            with conversion_errors(f"Core ML conversion of graph {spec.name!r}"):
                mlmodel, _ = convert_graph(spec)
                path = out / f"{spec.name}{self.extension}"
                with quiet_coremltools():
                    mlmodel.save(str(path))
            files.append(path)
        return files

    def open(self, out: Path, bundle: dict[str, Any]) -> CoreMLGraphRunner | str:
        system = platform.system()
        if system != "Darwin":
            return NOT_ON_APPLE.format(system=system)
        return CoreMLGraphRunner(out, bundle["graphs"])

    def inspect(self, out: Path, bundle: dict[str, Any]) -> dict[str, Any]:
        """Per graph: inputs/outputs as bundle.json names them, MIL op counts, weight.bin size,
        the compressed weights by code width; totals by code width under ``compressed``, with
        bits per weight (stored, and of the codes alone)."""
        import coremltools as ct

        graphs: dict[str, Any] = {}
        mismatches: list[str] = []
        totals: dict[str, dict[str, int]] = {}
        for name, g in bundle["graphs"].items():
            package = out / g["file"]
            with quiet_coremltools():
                model_spec = ct.utils.load_spec(str(package))
            inputs, outputs = _feature_names(model_spec)
            expected_in = [e["name"] if isinstance(e, dict) else e for e in g["inputs"]]
            expected_out = [e["name"] if isinstance(e, dict) else e for e in g["outputs"]]
            if inputs != expected_in or outputs != expected_out:
                mismatches.append(f"{name}: {inputs}->{outputs}, bundle says {expected_in}->{expected_out}")
            with quiet_coremltools():
                report = weight_report(model_spec, package / WEIGHTS_DIR)
            for width, entry in report["compressed"].items():
                total = totals.setdefault(width, dict.fromkeys(entry, 0))
                for key, value in entry.items():
                    total[key] += value
            graphs[name] = {
                "inputs": inputs,
                "outputs": outputs,
                "weight_bin_bytes": (package / WEIGHTS_DIR / "weight.bin").stat().st_size,
                **report,
            }
        if mismatches:
            raise ExportError(
                ExportErrorCode.EXPORT_VALIDATION_FAILED,
                "Core ML packages do not match bundle.json: " + "; ".join(mismatches),
            )
        quantization = str(bundle.get("model", {}).get("quantization"))
        expected = EXPECTED_CODE_WIDTH.get(quantization)
        if expected is not None and expected not in totals:
            raise ExportError(
                ExportErrorCode.EXPORT_VALIDATION_FAILED,
                f"the {quantization} Core ML packages hold no {expected}-bit compressed "
                f"weights (found widths {sorted(totals)})",
            )
        compressed = {
            width: {
                **t,
                "bits_per_weight": t["bits"] / max(1, t["weights"]),
                "code_bits_per_weight": t["code_bits"] / max(1, t["weights"]),
            }
            for width, t in sorted(totals.items())
        }
        return {
            "structure_matches_bundle": not mismatches,
            "mismatches": mismatches,
            "compressed": compressed,
            "weight_bin_bytes": sum(g["weight_bin_bytes"] for g in graphs.values()),
            "graphs": graphs,
        }


WRITER = CoreMLWriter()
