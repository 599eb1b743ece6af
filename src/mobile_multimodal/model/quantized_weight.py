"""How a quantized weight is stored: packed codes with float16 group parameters, and each layer's
precision (``LayerSpec``) as the manifest records it.

This is the format the network executes (``quantized_layers.py``) and loads
(``quantized_loading.py``); ``mobile_multimodal.quantization`` decides the codes and writes it.
A weight matrix ``W`` (out, in) is cut, row by row, into groups of ``group_size`` consecutive
input columns (the last group of a row may be shorter: nothing is padded in storage). Each group
``g`` has a scale ``s`` and a zero point ``z`` and stores codes ``q`` in ``[0, 2**bits - 1]``::

    W[o, i] ≈ (q[o, i] - z[o, g]) * s[o, g]            with g = i // group_size

A conv weight (out, in, kh, kw) is treated as the matrix (out, in * kh * kw).

Example::

    qw = from_codes(codes, scales, zeros, bits=2, group_size=80, shape=(64, 160))
    qw.packed.shape          # (64, 40): four 2-bit codes per byte
    w = qw.dequantize()      # (64, 160) float32
    LayerSpec.from_dict({"bits": 2, "group_size": 80, "kind": "linear"})
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mobile_multimodal.model.packing import pack, padded_length, unpack


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def dequantize_codes(codes: Tensor, scale: Tensor, zero: Tensor, group_size: int) -> Tensor:
    """(out, n) codes -> (out, n) float32 weights."""
    out, n = codes.shape
    ng = scale.shape[1]
    c = codes.to(torch.float32)
    if ng * group_size != n:
        c = F.pad(c, (0, ng * group_size - n))
    w = (c.reshape(out, ng, group_size) - zero[..., None].float()) * scale[..., None].float()
    return w.reshape(out, ng * group_size)[:, :n]


@dataclass
class QuantizedWeight:
    """A quantized weight as stored: packed codes and float16 group parameters."""

    packed: Tensor  # uint8 (out, padded_length(in, bits) * bits // 8)
    scales: Tensor  # float16 (out, groups)
    zeros: Tensor  # float16 (out, groups)
    bits: int
    group_size: int
    shape: tuple[int, ...]  # the float weight's shape

    @property
    def in_features(self) -> int:
        return math.prod(self.shape[1:])

    def codes(self) -> Tensor:
        return unpack(self.packed, self.bits)[:, : self.in_features]

    def dequantize(self) -> Tensor:
        w = dequantize_codes(self.codes(), self.scales, self.zeros, self.group_size)
        return w.reshape(self.shape)

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zeros))

    def bits_per_weight(self) -> float:
        """Stored bits (codes, scales and zero points) per weight."""
        return 8 * self.storage_bytes() / math.prod(self.shape)


def from_codes(
    codes: Tensor, scale: Tensor, zero: Tensor, bits: int, group_size: int, shape: tuple[int, ...]
) -> QuantizedWeight:
    """Pack (out, n) codes with their group parameters into a QuantizedWeight."""
    n = codes.shape[1]
    padded = padded_length(n, bits)
    if padded != n:
        codes = F.pad(codes, (0, padded - n))
    return QuantizedWeight(
        packed=pack(codes.contiguous(), bits),
        scales=scale.half().contiguous(),
        zeros=zero.half().contiguous(),
        bits=bits,
        group_size=group_size,
        shape=tuple(shape),
    )


@dataclass(frozen=True)
class LayerSpec:
    """One layer's stored precision, as the manifest's ``quantization.layers`` table holds it."""

    bits: int
    group_size: int | None  # None: one group per output channel
    kind: str  # linear | conv2d | embedding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSpec:
        try:
            bits, gs, kind = int(d["bits"]), d["group_size"], str(d["kind"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid layer spec {d!r}: {e}") from e
        if bits not in (2, 4, 8) or kind not in ("linear", "conv2d", "embedding"):
            raise ValueError(
                f"invalid layer spec {d!r}: bits must be 2, 4 or 8 and kind linear, conv2d or embedding"
            )
        return cls(bits, None if gs is None else int(gs), kind)
