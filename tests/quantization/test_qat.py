from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.quantized_layers import QuantLinear
from mobile_multimodal.quantization.fake_quant import FakeQuantLinear
from mobile_multimodal.quantization.policy import make_plan
from mobile_multimodal.quantization.qat import QATOptions, build_student, run_qat
from mobile_multimodal.quantization.rtn import quantize_rtn_layers
from mobile_multimodal.quantization.schemes import quantize_rtn
from mobile_multimodal.training.batches import BatchBuilder, BatchSizes
from mobile_multimodal.training.distillation import distillation_loss, outputs

SIZES = BatchSizes(caption=4, scene_vqa=4, easy_vqa=0, ocr=4)


def test_fake_quant_trains_and_converts_to_exactly_what_it_computed() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(160, 32)
    fq = FakeQuantLinear.from_quantized(linear, quantize_rtn(linear.weight, 2, 80))
    x = torch.randn(64, 160)
    target = torch.randn(64, 32)
    opt = torch.optim.Adam(fq.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss = ((fq(x) - target) ** 2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        assert fq.log_scale.grad is not None and fq.zero.grad is not None and fq.weight.grad is not None
        opt.step()
    assert float(((fq(x) - target) ** 2).mean().detach()) < first
    packed = QuantLinear(fq.to_quantized(), fq.bias)
    with torch.no_grad():
        assert torch.equal(packed(x), fq(x))


@pytest.mark.slow
def test_qat_distils_the_teacher_into_the_quantized_student(tiny_model: MobileMultiModalLLM) -> None:
    teacher = copy.deepcopy(tiny_model.network)
    plan = make_plan(teacher, 2, 16)
    init = quantize_rtn_layers(teacher, plan)
    builder = BatchBuilder(tiny_model.tokenizer, 0, SIZES, None)
    probe = builder.build(123)

    def distance(quantized: dict, float_net: nn.Module) -> float:
        student = build_student(float_net, quantized, plan)
        with torch.no_grad():
            return float(
                distillation_loss(outputs(teacher.eval(), probe), outputs(student.eval(), probe))["loss"]
            )

    before = distance(init, teacher)
    float_net, quantized, log = run_qat(
        teacher,
        init,
        plan,
        lambda i: builder.build(i % 4),
        QATOptions(steps=40, lr=1e-3, scale_lr=1e-2, warmup=2),
        outputs,
        distillation_loss,
    )
    assert len(log) == 40
    assert set(quantized) == set(plan) and quantized["decoder.blocks.0.mlp.fc1"].bits == 2
    after = distance(quantized, float_net)
    assert after < 0.7 * before, (before, after)
