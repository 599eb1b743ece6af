"""ExecuTorch export: the fp32 (Android) and INT4 (iOS) bundles are built ONCE per session and
run every task through a full greedy decode in the ExecuTorch runtime (export validation);
the XNNPACK forms of our weights and the hand-written attention/LayerNorm are checked alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mobile_multimodal.export.formats import package_version
from mobile_multimodal.model.quantized_weight import QuantizedWeight

pytestmark = pytest.mark.skipif(
    package_version("executorch") is None, reason="executorch is not installed (pip install '.[export]')"
)

Built = tuple[Path, dict[str, Any]]
EXAMPLES = 8  # per task in the bundles' validation (the export benchmark runs the full splits)


@pytest.fixture(scope="session")
def executorch_bundle(bundles_dir: Path) -> Callable[[str], Built]:
    """quantization -> (bundle dir, manifest), each exported on first use only."""
    from mobile_multimodal.export.pipeline import export_model

    built: dict[str, Built] = {}

    def get(quantization: str) -> Built:
        if quantization not in built:
            out = bundles_dir / f"executorch-{quantization}"
            target = "android" if quantization == "fp32" else "ios"  # both platforms take .pte
            manifest = export_model(
                "default",
                platform=target,
                fmt="executorch",
                quantization=quantization,
                out=out,
                validation_examples=EXAMPLES,
            )
            built[quantization] = (out, manifest)
        return built[quantization]

    return get


def _assert_tasks_match_pytorch(validation: dict[str, Any]) -> None:
    assert validation["executed"] is True and validation["runtime"] == "executorch"
    assert validation["passed"] is True
    tasks, reference = validation["tasks"], validation["reference"]
    assert set(tasks) == set(reference) >= {"captioning", "ocr", "vqa", "retrieval"}
    tolerance = validation["tolerance"]["accuracy_relative"]
    for task, score in tasks.items():
        assert abs(score - reference[task]) <= tolerance * abs(reference[task]) + 1e-9, task
    assert all(n == EXAMPLES for n in validation["examples_per_task"].values())


@pytest.mark.slow
def test_fp32_bundle_decodes_every_task_like_pytorch(executorch_bundle: Callable[[str], Built]) -> None:
    _, manifest = executorch_bundle("fp32")
    validation = manifest["validation"]
    _assert_tasks_match_pytorch(validation)
    assert validation["tolerance"]["accuracy_relative"] == 0.02  # the shared default, nothing looser
    assert validation["max_abs_diff"] < 1e-3  # float32 XNNPACK kernels vs PyTorch


@pytest.mark.slow
def test_int4_bundle_decodes_every_task_within_its_stated_tolerance(
    executorch_bundle: Callable[[str], Built],
) -> None:
    out, manifest = executorch_bundle("int4")
    fp32_out, _ = executorch_bundle("fp32")
    assert manifest["platform"] == "ios"
    _assert_tasks_match_pytorch(manifest["validation"])
    size = sum(p.stat().st_size for p in out.glob("*.pte"))
    fp32_size = sum(p.stat().st_size for p in fp32_out.glob("*.pte"))
    assert size < 0.4 * fp32_size  # 4-bit blocks, not float weights


@pytest.mark.slow
def test_attention_and_layer_norm_run_inside_xnnpack(executorch_bundle: Callable[[str], Built]) -> None:
    out, _ = executorch_bundle("fp32")
    storage = json.loads((out / "bundle.json").read_text())["weights"]["storage"]["graphs"]
    assert set(storage) == {"vision", "ocr", "cross_kv", "decoder_step", "image_embed", "text_embed"}
    # what the stock decompositions would leave to the portable kernels, and the compute ops
    slow = {
        "aten::native_layer_norm",
        "aten::_softmax",
        "aten::bmm",
        "aten::where",
        "aten::logical_not",
        "aten::any",
        "aten::split_with_sizes_copy",
        "aten::select_copy",
        "aten::gelu",
        "aten::convolution",
        "aten::addmm",
        "aten::linear",
    }
    for name, graph in storage.items():
        assert graph["delegates"].get("XnnpackBackend", 0) >= 1, name
        left = [op for op in graph["portable_ops"] if op in slow]
        assert not left, (name, left)
    assert storage["decoder_step"]["delegates"] == {"XnnpackBackend": 1}  # one XNNPACK graph per step


def test_hand_written_layer_norm_and_attention_equal_the_stock_ops() -> None:
    from mobile_multimodal.export.xnnpack_ops import layer_norm, scaled_dot_product_attention, select, where

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 48, generator=gen)
    w, b = torch.randn(48, generator=gen), torch.randn(48, generator=gen)
    torch.testing.assert_close(layer_norm(x, [48], w, b, 1e-5), F.layer_norm(x, [48], w, b, 1e-5))
    q = torch.randn(2, 3, 5, 16, generator=gen)
    k, v = torch.randn(2, 3, 9, 16, generator=gen), torch.randn(2, 3, 9, 16, generator=gen)
    mask = torch.rand(2, 1, 5, 9, generator=gen) > 0.4
    mask[..., 0] = True  # every query sees a key
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    )
    cache = torch.randn(4, 1, 3, 9, 16, generator=gen)
    assert torch.equal(select(cache, 0, 2), cache[2])
    write = torch.arange(9)[None, None, :, None] == 4
    assert torch.equal(where(write, k[:1], cache[0]), torch.where(write, k[:1], cache[0]))


def _whole_zero_rtn(weight: torch.Tensor, bits: int) -> QuantizedWeight:
    """Round-to-nearest with whole zero points (ours are free below 8 bits)."""
    from mobile_multimodal.quantization.schemes import params_from_range, quantize_with

    groups = weight.detach().reshape(weight.shape[0], -1, 80)
    scale, zero = params_from_range(groups.amin(-1), groups.amax(-1), bits, step=1.0)
    return quantize_with(weight, scale, zero, bits, 80)


@pytest.mark.parametrize("in_features", [160, 400])
def test_int2_codes_with_whole_zero_points_are_carried_exactly_in_xnnpack_4bit_blocks(
    in_features: int,
) -> None:
    from mobile_multimodal.export.xnnpack_quant import BlockwiseLinear

    linear = torch.nn.Linear(in_features, 64)
    qw = _whole_zero_rtn(linear.weight, 2)
    block = BlockwiseLinear(linear, qw)
    assert block.exact_blocks == block.blocks == 64 * (in_features // 80) * 3
    stored = block.linear.weight.dequantize().view(64, in_features // 80, 96)
    assert torch.equal(stored[..., 80:], torch.zeros_like(stored[..., 80:]))  # the padding
    assert torch.equal(stored[..., :80].reshape(64, in_features), qw.dequantize())
    # its forward quantizes activations to int8 per token, as XNNPACK does: close, not equal
    x = torch.randn(5, in_features)
    with torch.no_grad():
        exact = F.linear(x, qw.dequantize(), linear.bias)
        assert (block(x) - exact).abs().max() < 0.02 * exact.abs().max()


def test_int4_codes_are_exact_where_they_fit_and_within_one_step_elsewhere() -> None:
    from mobile_multimodal.export.xnnpack_quant import blockwise_codes

    qw = _whole_zero_rtn(torch.randn(64, 160), 4)
    q4, scale, exact = blockwise_codes(qw)
    stored = (q4.float() * scale.repeat_interleave(32, dim=1)).view(64, 2, 96)[..., :80].reshape(64, 160)
    error = (stored - qw.dequantize()).abs()
    step = qw.scales.float().repeat_interleave(80, dim=1)
    assert 0 < exact < scale.numel()  # min-max codes of a Gaussian need the full -15..15 sometimes
    assert bool((error <= step + 1e-7).all())  # a doubled scale costs at most one of our steps


def test_toolchain_reports_executorch() -> None:
    from mobile_multimodal.export.executorch import WRITER

    assert WRITER.toolchain()["executorch"] == package_version("executorch") is not None
    assert WRITER.toolchain()["torchao"] is not None


def test_free_zero_points_are_carried_within_a_fraction_of_a_step() -> None:
    from mobile_multimodal.export.xnnpack_quant import blockwise_codes
    from mobile_multimodal.quantization.schemes import quantize_rtn, quantize_with

    def stored(q4: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (q4.float() * scale.repeat_interleave(32, dim=1)).view(64, 2, 96)[..., :80].reshape(64, 160)

    for bits, bound in ((2, 3 / 14), (4, 15 / 14)):
        qw = quantize_rtn(torch.randn(64, 160), bits=bits, group_size=80, zero_points="free")
        zeros = qw.zeros.float()
        assert bool((zeros != zeros.round()).any())
        q4, scale, _ = blockwise_codes(qw)
        step = qw.scales.float().repeat_interleave(80, dim=1)
        assert bool(((stored(q4, scale) - qw.dequantize()).abs() <= bound * step + 1e-6).all())
    # half-integer zero points: a grid of half our step holds them exactly
    q2 = quantize_rtn(torch.randn(64, 160), bits=2, group_size=80, zero_points="free")
    half = quantize_with(q2.dequantize(), q2.scales.float(), (q2.zeros.float() * 2).round() / 2, 2, 80)
    q4, scale, exact = blockwise_codes(half)
    assert exact == scale.numel()
    assert torch.equal(stored(q4, scale), half.dequantize())
