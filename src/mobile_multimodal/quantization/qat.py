"""Quantization-aware training with distillation from the fp32 model (the road to usable INT2).

The student is a copy of the fp32 network in which every low-bit Linear is a FakeQuantLinear
(started from the GPTQ solution) and every INT8 layer is already its packed module (frozen).
It trains on batches from our corpus (``BatchBuilder``) to match the fp32 teacher on every
output the eval scores:

- decoder (captioning, VQA): KL(teacher ‖ student) of the next-token distributions at every
  target position;
- OCR: KL of the per-frame CTC distributions;
- retrieval: KL of the image→text and text→image similarity distributions of the batch, plus
  cosine distance of each embedding to the teacher's.

Latent weights, log-scales, zero points, norms, biases and position tables all learn.
BatchNorm statistics stay frozen.

Reference: Hinton et al. 2015 (distillation); Esser et al. 2020 (LSQ, learned step sizes).

Example::

    student, quantized, log = run_qat(fp32_net, gptq_result, plan, builder, QATOptions(steps=600))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.quantization.fake_quant import FakeQuantLinear
from mobile_multimodal.quantization.policy import LayerSpec
from mobile_multimodal.quantization.qlinear import quantized_module, replace_module
from mobile_multimodal.quantization.schemes import QuantizedWeight
from mobile_multimodal.training.batches import Batch

# QAT batches come from a step range training never reaches, so they are fresh samples
FIRST_STEP = 1_000_000


@dataclass
class QATOptions:
    steps: int = 600
    lr: float = 2e-4  # latent weights, norms, biases
    scale_lr: float = 1e-3  # log-scales and zero points
    warmup: int = 20
    retrieval_weight: float = 1.0
    log_every: int = 25


@dataclass
class Outputs:
    logits: Tensor  # (positions, V) at target positions
    ocr: Tensor  # (B, frames, C) log-probs
    image: Tensor  # (Nc, E) normalised
    text: Tensor  # (Nc, E) normalised
    scale: Tensor  # retrieval temperature


def outputs(net: MultiModalNet, batch: Batch) -> Outputs:
    """Every scored output of one batch (the same forward passes as training's loss)."""
    tokens, _ = net.encode_images(batch.images, batch.question_ids, batch.question_valid)
    logits = net.decoder(batch.seq_ids, tokens, batch.seq_valid)[:, :-1][batch.target_mask[:, :-1]]
    image = net.image_head(tokens[: batch.n_caption])
    text = net.text_embeddings(batch.caption_ids, batch.caption_valid)
    scale = net.text_encoder.logit_scale.exp().clamp(max=100.0)
    return Outputs(logits, net.read_text(batch.ocr_images), image, text, scale)


def _kl(teacher_logp: Tensor, student_logp: Tensor) -> Tensor:
    """Mean over rows of KL(teacher ‖ student), both given as log-probabilities."""
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")


def distillation_loss(t: Outputs, s: Outputs, retrieval_weight: float = 1.0) -> dict[str, Tensor]:
    decoder = _kl(F.log_softmax(t.logits, -1), F.log_softmax(s.logits, -1))
    frames = t.ocr.shape[-1]
    ocr = _kl(t.ocr.reshape(-1, frames), s.ocr.reshape(-1, frames))
    t_sim, s_sim = t.scale * t.image @ t.text.T, s.scale * s.image @ s.text.T
    sim = (
        _kl(F.log_softmax(t_sim, 1), F.log_softmax(s_sim, 1))
        + _kl(F.log_softmax(t_sim.T, 1), F.log_softmax(s_sim.T, 1))
    ) / 2
    cosine = 2 - (t.image * s.image).sum(-1).mean() - (t.text * s.text).sum(-1).mean()
    retrieval = sim + cosine
    return {
        "loss": decoder + ocr + retrieval_weight * retrieval,
        "decoder": decoder,
        "ocr": ocr,
        "retrieval": retrieval,
    }


def build_student(
    teacher: MultiModalNet, init: dict[str, QuantizedWeight], plan: dict[str, LayerSpec]
) -> MultiModalNet:
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


def float_network(student: nn.Module, teacher: MultiModalNet) -> MultiModalNet:
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
    teacher: MultiModalNet,
    init: dict[str, QuantizedWeight],
    plan: dict[str, LayerSpec],
    batches: Callable[[int], Batch],
    opts: QATOptions,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> tuple[MultiModalNet, dict[str, QuantizedWeight], list[dict[str, float]]]:
    """Distil the teacher into a fake-quantized student. Returns (float network carrying the
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
            target = outputs(teacher, batch)
        losses = distillation_loss(target, outputs(student, batch), opts.retrieval_weight)
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
