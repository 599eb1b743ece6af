"""ExecuTorch ``.pte`` writer: every graph lowered to the XNNPACK backend (Android and iOS).

Each graph goes ``torch.export`` -> our decompositions -> ``to_edge_transform_and_lower`` with
the ``XnnpackPartitioner`` -> one ``<graph>.pte`` (``pte_lowering.py``: the graphs are lowered in
parallel processes, the slow part of the export), and runs again in the ExecuTorch runtime
(``executorch.runtime``) for validation.

Attention and LayerNorm are decomposed by hand (``xnnpack_ops.py``): the stock decompositions
leave LayerNorm, the boolean-mask handling of ``scaled_dot_product_attention`` and the
reductions they use to the portable (unoptimised) kernels. What still runs outside XNNPACK is
read back from the written file by ``inspect()`` (the program's non-delegated operators).

Precision, XNNPACK's own low-bit scheme (``xnnpack_quant.py`` has the details):

- ``fp32``: float weights;
- ``int8``: every Linear as XNNPACK's dynamically quantized linear (int8 activations per token,
  int8 symmetric weights per output channel, re-rounded from our int8 weights, whose codes have
  a zero point XNNPACK cannot take);
- ``int4`` / ``int2``: Linears quantized to 4 or 2 bits become XNNPACK 4-bit blockwise weights
  (blocks of 32) with int8 dynamic activations. Our groups of 80 are padded to 96 columns so no
  block straddles two groups; each block holds a code's offset from its zero point on a grid
  of its own (XNNPACK has no 2-bit kernel and no zero point): exactly for whole zero points,
  else within half the block's grid step, for free ones (QAT's, ``--zero-points free``): 0.22 of
  our step at 2 bits, about one at 4 (``xnnpack_quant``).
  XNNPACK runs 4-bit weights only with int8 activations (a weight-only 4-bit linear has no
  XNNPACK kernel), so the exported model differs from PyTorch's by that rounding; validation
  measures what it costs in task accuracy. 8-bit Linears of the mixed policy are as ``int8``.

Convolutions and embeddings keep float weights (dequantized from the packed ones) at every
precision: XNNPACK has no weight-only conv and embeddings are not delegated at all.

Example::

    writer = writer_for("executorch")
    files = writer.write(model, build_graphs(model), "int4", Path("bundle"))
    runner = writer.open(Path("bundle"), bundle)
    runner.run("text_embed", {"ids": ids, "mask": mask})["embedding"]
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mobile_multimodal.errors import conversion_errors
from mobile_multimodal.export.formats import package_version
from mobile_multimodal.export.pte_lowering import LoweringJob, lower_graphs
from mobile_multimodal.export.validate import ACCURACY_TOLERANCE, MAX_ABS_DIFF_LIMIT

if TYPE_CHECKING:
    from mobile_multimodal.export.graphs import GraphSpec
    from mobile_multimodal.model.llm import MobileMultiModalLLM

BACKEND = "XnnpackBackend"
QUANTIZED_ACCURACY_TOLERANCE = 0.05  # relative; the quantization-loss alert threshold (DESIGN.md)
QUANTIZED_MAX_ABS_DIFF = 4.0  # ~3x the worst measured: 1.39 on the INT4 OCR log-probs


def pte_operators(path: Path) -> dict[str, Any]:
    """What the written program runs: its delegate calls by backend and the operators left to
    the portable kernels (read from the file, not from the conversion)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    plan = program.execution_plan[0]
    calls = Counter(plan.operators[c.instr_args.op_index].name for c in _kernel_calls(plan))
    delegates = Counter(d.id for d in plan.delegates)
    return {"delegates": dict(delegates), "portable_ops": dict(sorted(calls.items()))}


def _kernel_calls(plan: Any) -> list[Any]:
    from executorch.exir.schema import KernelCall

    return [
        instr
        for chain in plan.chains
        for instr in chain.instructions
        if isinstance(instr.instr_args, KernelCall)
    ]


class ExecuTorchGraphRunner:
    """Runs ``.pte`` graphs in the ExecuTorch runtime; inputs and outputs by the bundle's names."""

    def __init__(self, out: Path, graphs: dict[str, dict[str, Any]]) -> None:
        from executorch.runtime import Runtime, Verification

        runtime = Runtime.get()
        self._methods: dict[str, Any] = {}
        self._inputs: dict[str, list[str]] = {}
        self._outputs: dict[str, list[str]] = {}
        for name, g in graphs.items():
            program = runtime.load_program(out / g["file"], verification=Verification.Minimal)
            self._methods[name] = program.load_method("forward")
            self._inputs[name] = [_name_of(i) for i in g["inputs"]]
            self._outputs[name] = [_name_of(o) for o in g["outputs"]]

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._inputs[graph]
        missing = sorted(set(names) - set(inputs))
        if missing:
            raise ValueError(f"graph {graph!r} needs inputs {missing}")
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names]
        outputs = self._methods[graph].execute(args)
        return {n: np.asarray(t.numpy()) for n, t in zip(self._outputs[graph], outputs, strict=True)}


def _name_of(entry: Any) -> str:
    return str(entry["name"]) if isinstance(entry, dict) else str(entry)


class ExecuTorchWriter:
    name = "executorch"
    runtime = "executorch"
    prefill = False  # no prompt-length axis here: its apps feed the prompt through decoder_step
    extension = ".pte"
    install_hint = "pip install 'mobile-multimodal-llm[export]' (executorch==1.5.1)"

    def toolchain(self) -> dict[str, str | None]:
        return {"executorch": package_version("executorch"), "torchao": package_version("torchao")}

    def tolerance(self, quantization: str) -> tuple[float, float]:
        """(accuracy, max |output - PyTorch|) bounds of validation. fp32 takes the shared ones;
        a quantized .pte quantizes activations to int8 per token (XNNPACK's only quantized
        linear), which PyTorch's weight-only model does not: outputs move (OCR log-probs by 0.21
        at INT2, 1.39 at INT4), so only a loose output bound holds and the task scores carry the
        check, with the project's quantization-loss warning threshold."""
        if quantization == "fp32":
            return ACCURACY_TOLERANCE, MAX_ABS_DIFF_LIMIT
        return QUANTIZED_ACCURACY_TOLERANCE, QUANTIZED_MAX_ABS_DIFF

    def write(
        self, model: MobileMultiModalLLM, graphs: list[GraphSpec], quantization: str, out: Path
    ) -> list[Path]:
        jobs = [LoweringJob(g.name, g.module, g.quantized, g.example_inputs) for g in graphs]
        with conversion_errors("ExecuTorch export"):
            programs = lower_graphs(jobs, quantization)  # in parallel: see pte_lowering.py
        files = []
        for spec in graphs:
            path = out / f"{spec.name}{self.extension}"
            path.write_bytes(programs[spec.name])
            files.append(path)
        return files

    def open(self, out: Path, bundle: dict[str, Any]) -> ExecuTorchGraphRunner | str:
        return ExecuTorchGraphRunner(out, bundle["graphs"])

    def inspect(self, out: Path, bundle: dict[str, Any]) -> dict[str, Any]:
        """Per graph: XNNPACK delegate calls, operators left outside XNNPACK, file size."""
        report: dict[str, Any] = {}
        for name, g in bundle["graphs"].items():
            path = out / g["file"]
            report[name] = {"bytes": path.stat().st_size, **pte_operators(path)}
        return {"graphs": report}


WRITER = ExecuTorchWriter()
