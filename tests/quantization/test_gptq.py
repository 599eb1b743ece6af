from __future__ import annotations

import torch

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.quantization.gptq import (
    MIN_ROWS_PER_INPUT,
    calibrate,
    gptq_quantize,
    quantize_gptq_layers,
)
from mobile_multimodal.quantization.policy import make_plan
from mobile_multimodal.quantization.schemes import quantize_rtn
from mobile_multimodal.training.batches import BatchBuilder, BatchSizes
from mobile_multimodal.training.quantize import calibration_forward

SIZES = BatchSizes(caption=4, scene_vqa=4, easy_vqa=0, ocr=4)


def test_gptq_lowers_the_output_error_below_round_to_nearest() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(160, 160, generator=gen) / 160**0.5
    x = torch.randn(3000, 160, generator=gen) @ mix  # correlated inputs, as in a real layer
    w = torch.randn(96, 160, generator=gen) * 0.05
    h = x.T @ x / x.shape[0]

    def output_mse(q: torch.Tensor) -> float:
        return float(((x @ (q - w).T) ** 2).mean())

    for bits, gs in ((2, 80), (4, 80), (8, None)):
        rtn = output_mse(quantize_rtn(w, bits, gs).dequantize())
        gptq = output_mse(gptq_quantize(w, h, bits, gs).dequantize())
        assert gptq < 0.8 * rtn, (bits, gptq, rtn)


def test_hessians_cover_every_linear_and_are_symmetric_psd(tiny_model: MobileMultiModalLLM) -> None:
    net = tiny_model.network
    builder = BatchBuilder(tiny_model.tokenizer, 0, SIZES, None)
    names = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    hessians = calibrate(net, names, [builder.build(0)], calibration_forward).hessians
    assert set(hessians) == set(names)
    for name, h in hessians.items():
        n = net.get_submodule(name).in_features
        assert h.shape == (n, n)
        assert torch.allclose(h, h.T, atol=1e-5)
        eig = torch.linalg.eigvalsh(h.double())
        # PSD up to float32 accumulation error, relative to the largest eigenvalue
        assert float(eig.min()) > -1e-6 * max(1.0, float(eig.max()))


def test_gptq_plan_quantizes_every_planned_layer_at_its_width(tiny_model: MobileMultiModalLLM) -> None:
    plan = make_plan(tiny_model.network, 2, 32)
    builder = BatchBuilder(tiny_model.tokenizer, 0, SIZES, None)
    quantized = quantize_gptq_layers(
        tiny_model.network, plan, [builder.build(0)], calibration_forward
    ).quantized
    assert set(quantized) == set(plan)
    assert {quantized[n].bits for n in plan} == {2, 4, 8}  # INT2's column projection: 4 bits
    assert all(quantized[n].bits == plan[n].bits for n in plan)


def test_layers_with_too_few_calibration_rows_are_rounded_to_nearest(tiny_model: MobileMultiModalLLM) -> None:
    net = tiny_model.network
    plan = make_plan(net, 2, 32)
    builder = BatchBuilder(tiny_model.tokenizer, 0, SIZES, None)
    batches = [builder.build(0)]
    rows = calibrate(
        net, [n for n, s in plan.items() if s.kind == "linear"], batches, calibration_forward
    ).rows
    # the retrieval projection sees one row per example: fewer than its inputs
    proj = "text_encoder.proj"
    assert rows[proj] < net.get_submodule(proj).in_features
    result = quantize_gptq_layers(
        net, plan, batches, calibration_forward, min_rows_per_input=MIN_ROWS_PER_INPUT
    )
    assert result.rounded_to_nearest[proj] == rows[proj]
    assert all(
        rows[n] < MIN_ROWS_PER_INPUT * net.get_submodule(n).in_features for n in result.rounded_to_nearest
    )
    assert torch.equal(
        result.quantized[proj].dequantize(), quantize_rtn(net.get_submodule(proj).weight, 2, 32).dequantize()
    )
    # with the rule off (the default) every Linear is GPTQ's, and that projection comes out differently
    every = quantize_gptq_layers(net, plan, batches, calibration_forward)
    assert every.rounded_to_nearest == {}
    assert not torch.equal(every.quantized[proj].dequantize(), result.quantized[proj].dequantize())
