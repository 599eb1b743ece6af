from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_multimodal.model.quantized_weight import num_groups
from mobile_multimodal.quantization.gptq import gptq_quantize
from mobile_multimodal.quantization.schemes import (
    layer_zero_points,
    minmax_params,
    params_from_range,
    qmax,
    quantize_codes,
    quantize_rtn,
    zero_step,
)


def representable(
    bits: int, out: int, n: int, group_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight that some (scale, zero) of each group represents exactly: codes that include 0 and
    qmax in every group, integer zero points, power-of-two scales."""
    gen = torch.Generator().manual_seed(seed)
    top = qmax(bits)
    ng = num_groups(n, group_size)
    codes = torch.randint(0, top + 1, (out, n), generator=gen)
    for g in range(ng):
        lo = g * group_size
        width = min(group_size, n - lo)
        codes[:, lo] = 0
        if width > 1:
            codes[:, lo + 1] = top
    zero = torch.randint(0, top + 1, (out, ng), generator=gen).float()
    scale = 2.0 ** -torch.randint(2, 9, (out, ng), generator=gen).float()
    col_group = torch.arange(n) // group_size
    w = (codes.float() - zero[:, col_group]) * scale[:, col_group]
    return w, codes.to(torch.uint8)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    out=st.integers(1, 5),
    n=st.integers(2, 50),
    gs=st.integers(2, 24),
    seed=st.integers(0, 2**31),
)
def test_representable_weights_round_trip_exactly(bits: int, out: int, n: int, gs: int, seed: int) -> None:
    gs = min(gs, n)
    n += n % gs == 1  # a group of one value cannot hold both ends of the grid
    w, codes = representable(bits, out, n, gs, seed)
    qw = quantize_rtn(w, bits, gs)
    assert torch.equal(qw.codes(), codes)
    assert torch.equal(qw.dequantize(), w)


@settings(max_examples=20, deadline=None)
@given(bits=st.sampled_from([2, 4]), seed=st.integers(0, 2**31))
def test_gptq_leaves_representable_weights_exact(bits: int, seed: int) -> None:
    w, _ = representable(bits, 6, 40, 16, seed)
    x = torch.randn(200, 40, generator=torch.Generator().manual_seed(seed))
    qw = gptq_quantize(w, x.T @ x / 200, bits, 16)
    assert torch.equal(qw.dequantize(), w)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), gs=st.sampled_from([8, 16, 80, 1000]), seed=st.integers(0, 2**31))
def test_round_to_nearest_error_is_at_most_half_a_step(bits: int, gs: int, seed: int) -> None:
    w = torch.randn(7, 60, generator=torch.Generator().manual_seed(seed))
    qw = quantize_rtn(w, bits, gs)
    step = qw.scales.float().repeat_interleave(qw.group_size, dim=1)[:, :60]
    err = (qw.dequantize() - w).abs()
    assert bool((err <= step / 2 + 1e-6).all())


def test_int8_is_one_group_per_output_channel_and_int2_is_truly_2_bits() -> None:
    w = torch.randn(64, 160)
    q8 = quantize_rtn(w, 8)
    assert q8.scales.shape == (64, 1) and q8.packed.shape == (64, 160)
    q2 = quantize_rtn(w, 2, 80)
    assert q2.packed.shape == (64, 40) and q2.scales.shape == (64, 2)
    # 2 bits per code + two float16 numbers (scale, zero) per 80 weights
    assert q2.bits_per_weight() == 2 + 32 / 80
    # a short last group: 160 columns in groups of 64 -> 64, 64, 32
    assert quantize_rtn(w, 2, 64).scales.shape == (64, 3)


def test_clip_search_never_loses_to_min_max() -> None:
    w = torch.randn(32, 160) * torch.linspace(0.1, 3, 160)
    w[0, 0] = 25.0  # an outlier
    for bits in (2, 4):
        plain = minmax_params(w, bits, 80)
        searched = minmax_params(w, bits, 80, clip_search=True)

        def mse(params: tuple[torch.Tensor, torch.Tensor], bits: int = bits) -> float:
            s, z = params
            q = quantize_codes(w, s, z, 80, bits).float()
            col = torch.arange(160) // 80
            return float((((q - z[:, col]) * s[:, col] - w) ** 2).mean())

        assert mse(searched) < mse(plain)


@settings(max_examples=20, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**31))
def test_zero_points_are_whole_unless_free_is_asked_for_below_8_bits(bits: int, seed: int) -> None:
    w = torch.randn(16, 160, generator=torch.Generator().manual_seed(seed))
    gs = 80 if bits < 8 else None
    whole = quantize_rtn(w, bits, gs).zeros.float()
    free = quantize_rtn(w, bits, gs, zero_points="free").zeros.float()
    assert zero_step(bits) == 1.0 and zero_step(bits, "free") == (1.0 if bits == 8 else 0.0)
    assert torch.equal(whole, whole.round())
    assert torch.equal(free, free.round()) == (bits == 8)
    assert bool(((free >= 0) & (free <= qmax(bits))).all())


def test_free_zero_points_allow_the_symmetric_2_bit_grid() -> None:
    # a group symmetric about 0 at 4 levels: (±0.5, ±1.5) * s needs the zero point at 1.5
    w = torch.tensor([[-1.5, -0.5, 0.5, 1.5] * 20])
    qw = quantize_rtn(w, 2, 80, zero_points="free")
    assert float(qw.zeros[0, 0]) == 1.5
    assert torch.equal(qw.dequantize(), w)
    s, z = params_from_range(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), 2, step=1.0)
    assert float(z[0, 0]) in (1.0, 2.0)  # whole zero points cannot: one end is clipped
    codes = quantize_codes(w, s, z, 80, 2).float()
    assert float(((codes - z) * s - w).abs().max()) > 0.4


@settings(max_examples=20, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**31))
def test_quarter_zero_points_are_multiples_of_a_quarter_below_8_bits(bits: int, seed: int) -> None:
    w = torch.randn(16, 160, generator=torch.Generator().manual_seed(seed))
    gs = 80 if bits < 8 else None
    quarter = quantize_rtn(w, bits, gs, zero_points="quarter").zeros.float()
    assert zero_step(bits, "quarter") == (1.0 if bits == 8 else 0.25)
    assert torch.equal(quarter * 4, (quarter * 4).round())
    assert bool(((quarter >= 0) & (quarter <= qmax(bits))).all())
    if bits == 2:  # a 4-bit container holds 4 * code and 4 * zero point whole (serving/onnx_sessions.py)
        assert float(quarter.max()) * 4 <= 15


def test_decoder_quarter_gives_the_decoders_layers_quarter_zero_points_and_the_others_free_ones() -> None:
    assert layer_zero_points("decoder-quarter", "decoder.blocks.0.mlp.fc1") == "quarter"
    assert layer_zero_points("decoder-quarter", "encoder.blocks.0.mlp.fc1") == "free"
    assert (
        layer_zero_points("decoder-quarter", "text_encoder.blocks.0.attn.q") == "free"
    )  # not a prefix match
    assert layer_zero_points("whole", "decoder.blocks.0.mlp.fc1") == "whole"
    with pytest.raises(ValueError, match="zero_points"):  # a model's mode, not one layer's
        zero_step(2, "decoder-quarter")


def test_unknown_zero_points_are_refused() -> None:
    with pytest.raises(ValueError, match="zero_points"):
        quantize_rtn(torch.randn(4, 80), 2, 80, zero_points="half")
