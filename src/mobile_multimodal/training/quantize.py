"""`mobile-mm quantize`: fp32 model -> packed variant directory + accuracy report.

This run joins the model, the quantization methods and training's corpus and evaluation, so
it lives in training, above the other two (docs/architecture.md): quantization gets batches and forward/loss
callables from here and never imports training.

Steps: plan the per-layer precision (policy.py), quantize with the chosen method (RTN, GPTQ
calibrated on our corpus, or QAT distilled from fp32 starting from GPTQ), write the variant,
load it back through ``MobileMultiModalLLM.from_pretrained`` (the path every user takes), score
it with the same evaluation as ``mobile-mm eval``, and compare with fp32.

Example::

    report = quantize_model(QuantizeOptions(bits=2, method="qat", model="default",
                                            out=Path("weights/default/int2")))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mobile_multimodal.data.easyvqa import load_easy_vqa
from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight
from mobile_multimodal.quantization.gptq import MIN_ROWS_PER_INPUT, quantize_gptq_layers
from mobile_multimodal.quantization.policy import DEFAULT_GROUP_SIZE, make_plan
from mobile_multimodal.quantization.qat import QATOptions, run_qat, summary
from mobile_multimodal.quantization.report import build_report
from mobile_multimodal.quantization.rtn import quantize_rtn_layers
from mobile_multimodal.quantization.schemes import ZERO_POINTS
from mobile_multimodal.quantization.variant_io import save_variant
from mobile_multimodal.training.batches import Batch, BatchBuilder, BatchSizes
from mobile_multimodal.training.canary_set import evaluate_canary
from mobile_multimodal.training.distillation import distillation_loss, outputs
from mobile_multimodal.training.evaluate import TASKS, evaluate_loaded
from mobile_multimodal.training.ocr_lm import ship_ocr_lm
from mobile_multimodal.training.prefetch import Prefetcher, auto_workers
from mobile_multimodal.training.train import compute_losses

METHODS = ("rtn", "gptq", "qat")
REPORT_NAME = "quantization_report.json"
CALIBRATION_SEED = 1  # a seed training (seed 0) never used: calibration sees fresh samples
AUTO = "auto"  # --zero-points' default: chosen by bits and method (QuantizeOptions.resolved)


def calibration_forward(net: MultiModalNet, batch: Batch) -> None:
    """GPTQ's calibration pass: training's loss forward, which runs every branch of the network."""
    compute_losses(net, batch, contrastive_weight=0.5)


@dataclass
class QuantizeOptions:
    bits: int
    out: Path
    method: str = "gptq"
    model: str | Path = "default"
    group_size: int = DEFAULT_GROUP_SIZE
    report: Path | None = None
    eval_limit: int | None = None
    calibration_batches: int = 16
    # smaller than training's batches: calibration and distillation need coverage, not the large
    # contrastive batch that retrieval training wants, and QAT runs at half the cost per step
    batch_sizes: BatchSizes = field(
        default_factory=lambda: BatchSizes(caption=16, scene_vqa=16, easy_vqa=8, ocr=32)
    )
    qat: QATOptions = field(default_factory=QATOptions)
    threads: int | None = None
    use_easy_vqa: bool = True
    # below 8 bits: "whole", "free", "quarter" or "decoder-quarter" zero points (schemes.zero_step,
    # schemes.layer_zero_points); "auto" (the default): at 2 bits decoder-quarter for gptq and free
    # for rtn, whole otherwise (``resolved``)
    zero_points: str = AUTO
    # GPTQ: Linears with fewer calibration rows per input column are rounded to nearest (0: none);
    # None (the default): 8 at 2 bits for gptq, 0 otherwise (``resolved``)
    gptq_min_rows: int | None = None

    def resolved(self) -> QuantizeOptions:
        """These options with "auto" and None made concrete. At 2 bits, GPTQ with free zero points
        (quarter-code ones in the decoder's Linears) and without GPTQ on the Linears calibration
        barely covers is how the bundled INT2 is built. Measured on the bundled model against the
        former defaults (whole zero points, GPTQ on every Linear): 0.29% against 1.02% worst-task
        loss with free zero points everywhere (benchmarks/quantization); quarter ones in the
        decoder cost captioning and VQA a few examples in 1,000 and let ONNX Runtime serve each
        generated token ~18% faster (no correction nodes: serving/onnx_sessions.py). Without GPTQ
        to absorb their rounding they cost more (round-to-nearest: captioning 1.33% against free
        ones' 0.54%), so rtn keeps free ones. At 4 and 8 bits, and for QAT (which learns its zero
        points from GPTQ's start), nothing was measured to move the defaults, so they stay whole
        zero points and GPTQ everywhere."""
        two_bit = self.bits == 2
        zero_points = self.zero_points
        if zero_points == AUTO:
            zero_points = (
                {"gptq": "decoder-quarter", "rtn": "free"}.get(self.method, "whole") if two_bit else "whole"
            )
        min_rows = self.gptq_min_rows
        if min_rows is None:
            min_rows = MIN_ROWS_PER_INPUT if two_bit and self.method == "gptq" else 0
        return replace(self, zero_points=zero_points, gptq_min_rows=min_rows)

    def validate(self) -> None:
        if self.bits not in (2, 4, 8):
            raise ValueError(f"--bits must be 8, 4 or 2, got {self.bits}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.calibration_batches < 1:
            raise ValueError("--calibration-batches must be >= 1")
        if self.method == "qat" and self.qat.steps < 1:
            raise ValueError("--qat-steps must be >= 1")
        if self.zero_points not in (AUTO, *ZERO_POINTS):
            raise ValueError(f"--zero-points must be one of {(AUTO, *ZERO_POINTS)}, got {self.zero_points!r}")
        if self.gptq_min_rows is not None and self.gptq_min_rows < 0:
            raise ValueError("--gptq-min-rows must be >= 0")
        if self.gptq_min_rows and self.method == "rtn":
            raise ValueError("--gptq-min-rows applies to --method gptq or qat, not rtn")


def _fp32_eval(fp32: MobileMultiModalLLM, q_eval: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """The fp32 report over the same examples: the one stored in the fp32 manifest when it
    covers exactly the same tasks and counts (evaluation is deterministic), else measured now."""
    stored = fp32.manifest.get("eval")
    if isinstance(stored, dict) and isinstance(stored.get("tasks"), dict):
        same = all(stored["tasks"].get(t, {}).get("n") == r["n"] for t, r in q_eval["tasks"].items())
        if same:
            return stored
    return evaluate_loaded(fp32, limit, tuple(q_eval["tasks"]))


def calibration_builder(fp32: MobileMultiModalLLM, opts: QuantizeOptions) -> BatchBuilder:
    """The batches GPTQ calibrates and QAT distils on: drawn like the model's own training data,
    with a seed training never used."""
    cfg = fp32.config
    return BatchBuilder(
        fp32.tokenizer,
        CALIBRATION_SEED,
        opts.batch_sizes,
        load_easy_vqa("train") if opts.use_easy_vqa else None,
        cfg.scene_size,
        cfg.ocr_height,
        cfg.ocr_width,
        data_version=fp32.manifest.get("data_version"),
        ocr_fit=cfg.ocr_fit,
    )


def _calibrated(
    opts: QuantizeOptions,
    net: MultiModalNet,
    plan: dict[str, LayerSpec],
    batches: Callable[[int], Batch],
    data_version: str,
    extra: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[dict[str, QuantizedWeight], MultiModalNet]:
    """GPTQ, then QAT for method qat, on the calibration ``batches``: (the quantized layers, the
    network carrying the float tensors to save). Records what was done in ``extra``."""
    float_net = net
    log(f"calibrating on {opts.calibration_batches} training batches (GPTQ)")
    min_rows = opts.gptq_min_rows or 0  # resolved above: never None here
    gptq = quantize_gptq_layers(
        net,
        plan,
        (batches(i) for i in range(opts.calibration_batches)),
        calibration_forward,
        min_rows_per_input=min_rows,
        zero_points=opts.zero_points,
    )
    quantized = gptq.quantized
    extra["calibration"] = {
        "batches": opts.calibration_batches,
        "seed": CALIBRATION_SEED,
        "batch_sizes": opts.batch_sizes.__dict__,
        "data": "procedural corpus + easy-VQA train",
        "data_version": data_version,
        # Linears GPTQ left to round-to-nearest (too few calibration rows), with their rows
        "min_rows_per_input": min_rows,
        "rounded_to_nearest": gptq.rounded_to_nearest,
    }
    if opts.method == "qat":
        log(f"quantization-aware training, {opts.qat.steps} steps, distilling from fp32")
        float_net, quantized, qat_log = run_qat(
            net,
            quantized,
            plan,
            batches,
            opts.qat,
            outputs,
            lambda t, s: distillation_loss(t, s, opts.qat.retrieval_weight),
            progress=lambda r: log(f"  qat step {r['step']}: loss {r['loss']:.4f} ({r['elapsed_s']}s)"),
        )
        extra["qat"] = summary(opts.qat, qat_log)
    return quantized, float_net


def quantize_model(opts: QuantizeOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quantize, write ``opts.out`` (and ``opts.report``), return the report."""
    opts.validate()
    opts = opts.resolved()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    fp32 = MobileMultiModalLLM.from_pretrained(opts.model)
    if fp32.quantization != "fp32":
        raise ValueError(f"{opts.model} is already quantized ({fp32.quantization}); quantize its fp32 model")
    net = fp32.network.eval()
    plan = make_plan(net, opts.bits, opts.group_size)
    builder = calibration_builder(fp32, opts)
    extra: dict[str, Any] = {
        "source": {"model": str(opts.model), "files": fp32.manifest.get("files", [])},
        # QAT starts from GPTQ's and learns them as floats
        "zero_points": "learned" if opts.method == "qat" else opts.zero_points,
    }
    float_net = net
    if opts.method == "rtn":
        quantized = quantize_rtn_layers(net, plan, zero_points=opts.zero_points)
    else:
        # drawn while the network runs (prefetch.py)
        with Prefetcher(builder.build, workers=auto_workers()) as batches:
            quantized, float_net = _calibrated(opts, net, plan, batches.get, builder.data.name, extra, log)
    group_size = None if opts.bits == 8 else opts.group_size  # INT8 is per output channel
    manifest = save_variant(
        opts.out, fp32, float_net, quantized, plan, opts.method, opts.bits, group_size, extra
    )
    if fp32.ocr_reader is not None:  # the variant reads OCR with its parent's language model
        manifest = ship_ocr_lm(opts.out, fp32.ocr_reader)

    # score what was written, loaded the way users load it
    variant = MobileMultiModalLLM.from_pretrained(opts.out)
    log(f"evaluating {variant.quantization} (limit {opts.eval_limit})")
    q_eval = evaluate_loaded(variant, opts.eval_limit, TASKS)
    fp32_eval = _fp32_eval(fp32, q_eval, opts.eval_limit)
    fp32_params = sum(p.numel() for p in net.parameters())
    report = build_report(fp32_eval, q_eval, quantized, fp32_params, manifest["quantization"])

    manifest["eval"] = q_eval
    manifest["canary"] = evaluate_canary(variant)  # the baseline of the server's live canary
    manifest["quantization"]["bits_per_weight"] = report["bits_per_weight"]
    manifest["quantization"]["baseline_eval"] = fp32_eval
    checkpoint.write_manifest(opts.out, manifest)
    text = json.dumps(report, indent=2) + "\n"
    (opts.out / REPORT_NAME).write_text(text)
    if opts.report is not None:
        opts.report.parent.mkdir(parents=True, exist_ok=True)
        opts.report.write_text(text)
    return report
