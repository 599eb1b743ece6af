"""Quantization-aware training with distillation from the fp32 model (the road to usable INT2).

The student is a copy of the fp32 network in which every low-bit Linear is a FakeQuantLinear
(started from the GPTQ solution) and every INT8 layer is already its packed module (frozen).
It trains on the caller's batches to match the fp32 teacher: ``forward(net, batch)`` gives a
network's outputs and ``loss(teacher_outputs, student_outputs)`` the distillation losses (a dict
with the total under ``"loss"``). This package never imports training: our corpus's batches and
the losses over every output the eval scores (decoder, OCR, retrieval) are in
``mobile_multimodal/training/distillation.py``.

Latent weights, log-scales, zero points, norms, biases and position tables all learn.
BatchNorm statistics stay frozen.

Reference: Hinton et al. 2015 (distillation); Esser et al. 2020 (LSQ, learned step sizes).

Example::

    student, quantized, log = run_qat(
        fp32_net, gptq_result, plan, builder.build, QATOptions(steps=600), outputs, distillation_loss
    )
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from mobile_multimodal.model.quantized_layers import quantized_module, replace_module
from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight
from mobile_multimodal.quantization.fake_quant import FakeQuantLinear

B = TypeVar("B")  # a batch: whatever ``forward`` takes
Out = TypeVar("Out")  # a network's outputs: whatever ``forward`` returns and ``loss`` compares
N = TypeVar("N", bound=nn.Module)
# QAT batches come from a step range training never reaches, so they are fresh samples
FIRST_STEP = 1_000_000


@dataclass
class QATOptions:
    steps: int = 600
    lr: float = 2e-4  # latent weights, norms, biases
    scale_lr: float = 1e-3  # log-scales and zero points
    warmup: int = 20
    retrieval_weight: float = 1.0  # for the caller's loss (recorded in the manifest with the rest)
    log_every: int = 25


def build_student(teacher: N, init: dict[str, QuantizedWeight], plan: dict[str, LayerSpec]) -> N:
    """A copy of the teacher: low-bit Linears -> FakeQuantLinear, INT8 layers -> packed modules."""
    student = copy.deepcopy(teacher)
    for name, spec in plan.items():
        module = student.get_submodule(name)
        if spec.bits < 8 and isinstance(module, nn.Linear):
            new: nn.Module = FakeQuantLinear.from_quantized(module, init[name])
        else:
            new = quantized_module(init[name], module)
        replace_module(student, module, new)
    return student


def quantized_from_student(
    student: nn.Module, init: dict[str, QuantizedWeight], plan: dict[str, LayerSpec]
) -> dict[str, QuantizedWeight]:
    out = {}
    for name in plan:
        module = student.get_submodule(name)
        out[name] = module.to_quantized() if isinstance(module, FakeQuantLinear) else init[name]
    return out


def float_network(student: nn.Module, teacher: N) -> N:
    """The teacher's architecture carrying the student's trained float tensors (norms, biases,
    positions): what the variant file stores beside the packed layers."""
    net = copy.deepcopy(teacher)
    learned = student.state_dict()
    net.load_state_dict({k: learned.get(k, v) for k, v in net.state_dict().items()})
    return net


def _lr_factor(step: int, opts: QATOptions) -> float:
    if step < opts.warmup:
        return (step + 1) / opts.warmup
    progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _freeze_batchnorm(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def run_qat(
    teacher: N,
    init: dict[str, QuantizedWeight],
    plan: dict[str, LayerSpec],
    batches: Callable[[int], B],
    opts: QATOptions,
    forward: Callable[[N, B], Out],
    loss: Callable[[Out, Out], dict[str, Tensor]],
    progress: Callable[[dict[str, float]], None] | None = None,
) -> tuple[N, dict[str, QuantizedWeight], list[dict[str, float]]]:
    """Distil the teacher into a fake-quantized student: ``batches(step)`` gives step's batch,
    ``forward(net, batch)`` a network's outputs, ``loss(teacher_out, student_out)`` the losses
    (``"loss"`` is minimised; every entry is logged). Returns (float network carrying the
    trained float tensors, the quantized layers, the loss log)."""
    student = build_student(teacher, init, plan).train()
    for p in student.parameters():
        p.requires_grad_(True)
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    _freeze_batchnorm(student)
    quant_params = [p for n, p in student.named_parameters() if n.endswith(("log_scale", ".zero"))]
    qids = {id(p) for p in quant_params}
    others = [p for p in student.parameters() if p.requires_grad and id(p) not in qids]
    optim = torch.optim.AdamW(
        [
            {"params": others, "lr": opts.lr, "weight_decay": 0.0},
            {"params": quant_params, "lr": opts.scale_lr, "weight_decay": 0.0},
        ]
    )
    base = [g["lr"] for g in optim.param_groups]
    log: list[dict[str, float]] = []
    started = time.time()
    for step in range(opts.steps):
        batch = batches(FIRST_STEP + step)
        for g, lr in zip(optim.param_groups, base, strict=True):
            g["lr"] = lr * _lr_factor(step, opts)
        with torch.no_grad():
            target = forward(teacher, batch)
        losses = loss(target, forward(student, batch))
        optim.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(others, 1.0)
        optim.step()
        row = {
            "step": step + 1,
            "elapsed_s": round(time.time() - started, 1),
            **{k: round(float(v.detach()), 5) for k, v in losses.items()},
        }
        log.append(row)
        if progress is not None and ((step + 1) % opts.log_every == 0 or step + 1 == opts.steps):
            progress(row)
    student.eval()
    return float_network(student, teacher), quantized_from_student(student, init, plan), log


def summary(opts: QATOptions, log: list[dict[str, float]]) -> dict[str, Any]:
    """What the manifest records about a QAT run."""
    tail = log[-min(len(log), 25) :]
    first = log[: min(len(log), 25)]

    def mean(rows: list[dict[str, float]]) -> float | None:
        return round(sum(r["loss"] for r in rows) / len(rows), 5) if rows else None

    return {
        **asdict(opts),
        "first_loss": mean(first),
        "final_loss": mean(tail),
        "duration_s": log[-1]["elapsed_s"] if log else 0.0,
    }
