"""QAT's forward and loss (training/distillation.py): zero for a student equal to its teacher,
positive and differentiable when it differs."""

from __future__ import annotations

import copy

import torch

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.training.batches import BatchBuilder, BatchSizes
from mobile_multimodal.training.distillation import distillation_loss, outputs

SIZES = BatchSizes(caption=4, scene_vqa=4, easy_vqa=0, ocr=4)


def test_a_student_equal_to_its_teacher_loses_nothing(tiny_model: MobileMultiModalLLM) -> None:
    batch = BatchBuilder(tiny_model.tokenizer, 0, SIZES, None).build(0)
    net = tiny_model.network.eval()
    with torch.no_grad():
        t, s = outputs(net, batch), outputs(net, batch)
    losses = distillation_loss(t, s)
    assert set(losses) == {"loss", "decoder", "ocr", "retrieval"}
    assert all(abs(float(v)) < 1e-5 for v in losses.values()), losses


def test_a_different_student_is_pulled_towards_the_teacher(tiny_model: MobileMultiModalLLM) -> None:
    batch = BatchBuilder(tiny_model.tokenizer, 0, SIZES, None).build(0)
    teacher = tiny_model.network.eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
        target = outputs(teacher, batch)
    losses = distillation_loss(target, outputs(student, batch), retrieval_weight=2.0)
    assert all(float(losses[k].detach()) > 0 for k in ("decoder", "ocr", "retrieval")), losses
    expected = losses["decoder"] + losses["ocr"] + 2.0 * losses["retrieval"]
    assert torch.allclose(losses["loss"], expected)
    losses["loss"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.parameters())
