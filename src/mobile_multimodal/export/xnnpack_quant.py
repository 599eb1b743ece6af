"""Our packed weights in XNNPACK's quantized-linear forms, for the ExecuTorch writer.

XNNPACK runs a quantized Linear only with int8 activations quantized per token at run time
("dynamic quantization"), and only two weight forms: int8 symmetric per output channel, and
signed 4-bit in blocks of a multiple of 32 input columns, one scale per block (stored as
bfloat16), no zero point. Our weights are affine, ``w = (q - z) * s`` per group of 80 columns, so:

- a 2- or 4-bit layer keeps its codes: the input is padded from groups of 80 to groups of 96
  (three blocks of 32, the last 16 columns zero) so that no block straddles two of our groups,
  and each block stores ``round((q - z) / m)`` at scale ``m * s``, m chosen per block
  (``_block_multiples``; ``BlockwiseLinear.exact_blocks`` counts the blocks carried exactly).
  Whole zero points give whole offsets: a 2-bit one (-3..3) always fits the signed 4-bit range
  at m = 1, exactly, and a 4-bit one (-15..15) where the block's offsets lie in -8..7, else at
  the smallest whole m that fits. Free zero points (QAT's, or ``quantize --zero-points free``:
  ``quantization.schemes.zero_step``) give offsets that are not whole: the block then takes the
  finest grid that spans it, within ``m / 2`` of each offset (for 2-bit codes m <= 3/7: within
  0.22 of our step, a small part of the 2-bit rounding itself; for 4-bit codes m <= 15/7);
- an 8-bit layer is re-rounded to symmetric int8 per channel from its dequantized weight
  (our int8 codes have a zero point, so ``q - z`` spans -255..255).

Example::

    stats = quantize_for_xnnpack(module, spec.quantized, "int2")
    stats["exact_4bit_blocks"], stats["4bit_blocks"]       # blocks carried exactly, of all
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.quantized_weight import QuantizedWeight

BLOCK = 32  # XNNPACK's blockwise 4-bit weights: block sizes are multiples of 32
INT4_MIN, INT4_MAX = -8, 7
INT4: torch.dtype = getattr(torch, "int4")  # noqa: B009  (torch's stubs lack the sub-byte dtypes)


def _int8_activation_weight(qdata: Tensor, scale: Tensor, target: torch.dtype, block: int) -> Tensor:
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    return IntxUnpackedToInt8Tensor(
        qdata,
        scale,
        torch.zeros_like(scale, dtype=torch.int8),
        target,
        (1, block),
        torch.float32,
        IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN,
    )


def _block_multiples(offsets: Tensor, need: Tensor) -> Tensor:
    """Per block, the multiple m of our scale whose grid ``m * k`` (k in -8..7) holds the
    block's offsets ``q - z`` with the smallest largest error: 1 for whole offsets that fit
    (exact), the smallest whole m for wider ones, 1/k where it is exact (half-integer zero
    points: 1/2), else ``need``, the finest grid that still spans the block (error at most
    ``need / 2`` of our scale: for 2-bit codes ``need`` <= 3/7, so within 0.22 of a step)."""
    # exact grids first, so a block they hold (all zeros, say) keeps one
    candidates = [need.ceil().clamp(min=1)] + [torch.full_like(need, 1.0 / k) for k in range(2, 9)]
    candidates.append(need.clamp(min=1e-12))
    best = candidates[0]
    best_err = torch.full_like(need, float("inf"))
    for m in candidates:
        ratio = offsets / m[..., None]
        err = ((torch.round(ratio).clamp(INT4_MIN, INT4_MAX) - ratio).abs() * m[..., None]).amax(-1)
        better = (m >= need * (1 - 1e-6)) & (err < best_err)
        best = torch.where(better, m, best)
        best_err = torch.where(better, err, best_err)
    return best


def blockwise_codes(qw: QuantizedWeight) -> tuple[Tensor, Tensor, int]:
    """(out, n) 2/4-bit codes -> signed 4-bit codes (out, groups * padded) int8, block scales
    (out, groups * padded / 32) float32, and how many blocks hold our codes exactly."""
    out, n = qw.shape[0], qw.in_features
    gs, ng = qw.group_size, qw.scales.shape[1]
    padded = -(-gs // BLOCK) * BLOCK
    codes = qw.codes().float()
    if ng * gs != n:  # a short last group: its missing columns are offsets of zero
        codes = F.pad(codes, (0, ng * gs - n))
    offsets = codes.view(out, ng, gs) - qw.zeros.float()[..., None]
    mask = torch.ones(out, ng, gs)
    if ng * gs != n:
        mask.view(out, ng * gs)[:, n:] = 0
    offsets = F.pad(offsets * mask, (0, padded - gs)).view(out, ng, padded // BLOCK, BLOCK)
    high = offsets.amax(-1).clamp(min=0) / INT4_MAX
    low = (-offsets.amin(-1)).clamp(min=0) / -INT4_MIN
    multiple = _block_multiples(offsets, torch.maximum(high, low))
    ratio = offsets / multiple[..., None]
    q4 = torch.round(ratio).clamp(INT4_MIN, INT4_MAX)
    scale = qw.scales.float()[..., None] * multiple
    exact = int((q4 == ratio).all(-1).sum())
    return q4.reshape(out, -1).to(torch.int8), scale.reshape(out, -1), exact


class BlockwiseLinear(nn.Module):
    """A 2/4-bit Linear as XNNPACK's int8-activation x 4-bit blockwise linear, our groups padded
    to whole blocks (see the module docstring)."""

    def __init__(self, linear: nn.Linear, qw: QuantizedWeight) -> None:
        super().__init__()
        if qw.bits not in (2, 4):
            raise ValueError(f"BlockwiseLinear takes 2- or 4-bit weights, got {qw.bits}")
        q4, scale, self.exact_blocks = blockwise_codes(qw)
        self.blocks = scale.numel()
        self.in_features, self.group_size = qw.in_features, qw.group_size
        self.groups = qw.scales.shape[1]
        self.padded = q4.shape[1] // self.groups
        self.linear = nn.Linear(q4.shape[1], q4.shape[0], bias=linear.bias is not None)
        self.linear.weight = nn.Parameter(
            _int8_activation_weight(q4, scale, INT4, BLOCK), requires_grad=False
        )
        if linear.bias is not None:
            self.linear.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        gs, ng = self.group_size, self.groups
        if ng * gs != self.in_features:
            x = F.pad(x, (0, ng * gs - self.in_features))
        if self.padded != gs:
            x = F.pad(x.reshape(*lead, ng, gs), (0, self.padded - gs)).reshape(*lead, ng * self.padded)
        out: Tensor = self.linear(x)
        return out


def _int8_per_channel(linear: nn.Linear) -> None:
    """Re-round ``linear``'s (dequantized) weight to symmetric int8 per output channel."""
    w = linear.weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=2.0**-20)
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    linear.weight = nn.Parameter(
        _int8_activation_weight(q, scale, torch.int8, w.shape[1]), requires_grad=False
    )


def quantize_for_xnnpack(
    module: nn.Module, quantized: Mapping[str, QuantizedWeight], quantization: str
) -> dict[str, int]:
    """Swap, in place, every quantized Linear of ``module`` (``quantized``: submodule name ->
    the packed weight it was dequantized from) for its XNNPACK form. Returns counts: linears
    by form, 4-bit blocks and how many of them carry our codes exactly, float layers kept."""
    stats = {"linear_4bit": 0, "linear_int8": 0, "4bit_blocks": 0, "exact_4bit_blocks": 0, "float_kept": 0}
    if quantization == "fp32":
        return stats
    for name, qw in quantized.items():
        layer = module.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            stats["float_kept"] += 1  # convs, embeddings: see the executorch module docstring
            continue
        if qw.bits in (2, 4):
            new = BlockwiseLinear(layer, qw)
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, new)
            stats["linear_4bit"] += 1
            stats["4bit_blocks"] += new.blocks
            stats["exact_4bit_blocks"] += new.exact_blocks
        else:
            _int8_per_channel(layer)
            stats["linear_int8"] += 1
    return stats
