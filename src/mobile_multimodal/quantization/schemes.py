"""Weight-only affine quantization, group-wise along the input dimension: choosing the codes.

The stored format (``QuantizedWeight``: packed codes, float16 group parameters) is the model's,
in ``mobile_multimodal/model/quantized_weight.py``; this module decides what goes into it.

A weight matrix ``W`` (out, in) is cut, row by row, into groups of ``group_size`` consecutive
input columns (the last group of a row may be shorter: nothing is padded in storage). Each
group ``g`` has a scale ``s`` and a zero point ``z`` and stores codes ``q`` in
``[0, 2**bits - 1]``::

    W[o, i] ≈ (q[o, i] - z[o, g]) * s[o, g]            with g = i // group_size

INT8 uses one group per output channel (``group_size = in``); INT4 and INT2 use small groups.
Scales and zero points are stored as float16; codes are always computed with the float16
value of the scale, so what is stored dequantizes exactly as it was measured. Zero points are
whole codes, or below 8 bits any float16 value on request (``zero_step``).
A conv weight (out, in, kh, kw) is treated as the matrix (out, in * kh * kw).

Example::

    qw = quantize_rtn(torch.randn(64, 160), bits=2, group_size=64)
    qw.packed.shape          # (64, 40): four 2-bit codes per byte
    err = qw.dequantize() - w
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mobile_multimodal.model.quantized_weight import QuantizedWeight, from_codes, num_groups

# Below this a scale would be a float16 subnormal; it only happens for groups of (near) zeros.
MIN_SCALE = 2.0**-20
CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # shrink factors 1.0 .. 0.5


def qmax(bits: int) -> int:
    return (1 << bits) - 1


def as_matrix(weight: Tensor) -> Tensor:
    """(out, ...) -> (out, prod(...)) float32."""
    return weight.detach().reshape(weight.shape[0], -1).float()


def _groups(w: Tensor, group_size: int) -> Tensor:
    """(out, n) -> (out, groups, group_size); a short last group is padded by repeating its last
    value, which changes neither its minimum nor its maximum."""
    out, n = w.shape
    ng = num_groups(n, group_size)
    if ng * group_size != n:
        w = F.pad(w[None], (0, ng * group_size - n), mode="replicate")[0]
    return w.reshape(out, ng, group_size)


def _pad_mask(n: int, group_size: int, device: torch.device) -> Tensor:
    """(groups, group_size) bool: True at real columns, False at the padding of a short group."""
    ng = num_groups(n, group_size)
    return (torch.arange(ng * group_size, device=device) < n).reshape(ng, group_size)


def round_scale(scale: Tensor) -> Tensor:
    """Each scale rounded *up* to a float16 value (what storage will hold), back in float32.
    Rounding up keeps the grid as wide as the range it must cover, so every weight stays
    within half a step of a grid point."""
    s = scale.clamp(min=MIN_SCALE)
    h = s.half()
    h = torch.where(h.float() < s, torch.nextafter(h, torch.full_like(h, torch.inf)), h)
    return h.float()


ZERO_POINTS = ("whole", "free", "quarter", "decoder-quarter")
# "quarter": a multiple of this below 8 bits. At 2 bits such a zero point, and the codes, times 4
# are whole 4-bit values, so a 2-bit MatMulNBits widens to a 4-bit one without a correction
# (serving/onnx_sessions.widen_2bit_matmuls)
QUARTER = 0.25
# "decoder-quarter": quarter zero points in the layers under this prefix (the text decoder's, which
# run once per generated token), free ones elsewhere (``layer_zero_points``)
DECODER_PREFIX = "decoder."


def layer_zero_points(zero_points: str, layer: str) -> str:
    """The zero-point mode of one layer under the model's mode ``zero_points``: the mode itself,
    except ``"decoder-quarter"``, which is ``"quarter"`` for the decoder's layers and ``"free"``
    for the others."""
    if zero_points != "decoder-quarter":
        return zero_points
    return "quarter" if layer.startswith(DECODER_PREFIX) else "free"


def zero_step(bits: int, zero_points: str = "whole") -> float:
    """The grid a zero point is rounded to: whole codes, or below 8 bits free (0) with
    ``zero_points="free"`` or quarter codes with ``zero_points="quarter"``.

    A whole zero point puts one of the grid's levels exactly at 0. With 256 levels that costs
    nothing, and ONNX's ``DequantizeLinear`` (our INT8 export) needs it. With 2 bits' four
    levels it rules out the symmetric grid (±0.5, ±1.5) * scale that a group straddling 0 wants,
    and costs about half a level on one side. Measured on the bundled model at INT2 (GPTQ with
    ``gptq.MIN_ROWS_PER_INPUT``): OCR over 4,000 held-out lines lost 0.31% of fp32's accuracy
    with free zero points, 0.74% with half-integer ones; with whole ones (the INT2 shipped before
    2026-12-07) 0.62%. Round-to-nearest with whole zero points lost 3.1% of retrieval's recall@1, with free
    ones nothing. Free zero points are float16 like the scales, so storage does not change; ONNX
    Runtime's MatMulNBits and Core ML take them as floats, and XNNPACK's signed 4-bit blocks
    carry them on a grid of their own (``export/xnnpack_quant.py``). Quarter ones cost retrieval's
    recall@1 0.3% over five pools of 1,000 scenes against free ones when every layer has them, and
    nothing measurable in the decoder alone, whose per-token graph they let ONNX Runtime serve
    with no correction. ``mobile-mm quantize`` uses ``"decoder-quarter"`` at 2 bits with gptq and
    free ones with rtn unless told otherwise, whole ones at 4 and 8 bits
    (``training/quantize.QuantizeOptions.resolved``); the bundled INT2 is built with it
    (``scripts/retrain_default.sh``)."""
    if zero_points not in ZERO_POINTS or zero_points == "decoder-quarter":
        allowed = tuple(z for z in ZERO_POINTS if z != "decoder-quarter")  # a model's mode, not a layer's
        raise ValueError(f"zero_points must be one of {allowed}, got {zero_points!r}")
    if bits >= 8 or zero_points == "whole":
        return 1.0
    return 0.0 if zero_points == "free" else QUARTER


def params_from_range(lo: Tensor, hi: Tensor, bits: int, step: float = 1.0) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map [lo, hi] (widened to contain 0) onto [0, qmax], the zero
    point rounded to a multiple of ``step`` (1: whole codes; 0 leaves it free)."""
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = round_scale((hi - lo) / qmax(bits))
    zero = (-lo / scale).clamp(0, qmax(bits))
    if step > 0:
        zero = torch.round(zero / step) * step
    return scale, zero.half().float()


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, group_size: int, bits: int) -> Tensor:
    """(out, n) float -> (out, n) uint8 codes, round to nearest with the given group parameters."""
    n = w.shape[1]
    q = torch.round(_groups(w, group_size) / scale[..., None] + zero[..., None]).clamp(0, qmax(bits))
    return q.reshape(w.shape[0], -1)[:, :n].to(torch.uint8)


def minmax_params(
    w: Tensor, bits: int, group_size: int, clip_search: bool = False, zero_points: str = "whole"
) -> tuple[Tensor, Tensor]:
    """Per-group (scale, zero) of a (out, n) matrix from the group's min and max. With
    ``clip_search`` each group's range is shrunk by the factor in CLIP_GRID that minimises the
    group's squared rounding error (outliers then cost less than the resolution they steal)."""
    g = _groups(w, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    step = zero_step(bits, zero_points)
    scale, zero = params_from_range(lo, hi, bits, step)
    if not clip_search:
        return scale, zero
    mask = _pad_mask(w.shape[1], group_size, w.device)
    best = torch.full_like(lo, math.inf)
    for factor in CLIP_GRID:
        s, z = params_from_range(lo * factor, hi * factor, bits, step)
        q = torch.round(g / s[..., None] + z[..., None]).clamp(0, qmax(bits))
        err = (((q - z[..., None]) * s[..., None] - g) ** 2 * mask).sum(-1)
        better = err < best
        best = torch.where(better, err, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def quantize_with(weight: Tensor, scale: Tensor, zero: Tensor, bits: int, group_size: int) -> QuantizedWeight:
    """Quantize ``weight`` to nearest with given (float16-representable) group parameters."""
    w = as_matrix(weight)
    return from_codes(
        quantize_codes(w, scale, zero, group_size, bits), scale, zero, bits, group_size, tuple(weight.shape)
    )


def quantize_rtn(
    weight: Tensor,
    bits: int,
    group_size: int | None = None,
    clip_search: bool = False,
    zero_points: str = "whole",
) -> QuantizedWeight:
    """Round-to-nearest with min-max group parameters. ``group_size=None``: one group per
    output channel; ``zero_points``: see ``zero_step``."""
    w = as_matrix(weight)
    gs = w.shape[1] if group_size is None else min(group_size, w.shape[1])
    if gs < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    scale, zero = minmax_params(w, bits, gs, clip_search, zero_points)
    return quantize_with(weight, scale, zero, bits, gs)
