"""Bit packing of quantization codes: 2 codes per byte at INT4, 4 per byte at INT2, 1 at INT8.

The layout is *planar*: a row of ``n`` codes is cut into ``k = 8 // bits`` equal planes of
``n / k`` codes, and byte ``j`` holds code ``j`` of every plane (plane ``i`` at bit offset
``i * bits``). Unpacking is then ``k`` vectorised shift-and-mask operations and one
concatenation, with no interleaving gather (the layout gpt-fast uses for its int4 weights).

Example::

    codes = torch.tensor([[0, 1, 2, 3, 3, 2, 1, 0]], dtype=torch.uint8)
    packed = pack(codes, bits=2)             # shape (1, 2): 8 codes in 2 bytes
    assert torch.equal(unpack(packed, bits=2), codes)
"""

from __future__ import annotations

import torch
from torch import Tensor

SUPPORTED_BITS = (2, 4, 8)


def codes_per_byte(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bit width {bits}; choose one of {SUPPORTED_BITS}")
    return 8 // bits


def padded_length(n: int, bits: int) -> int:
    """Row length after padding to a whole number of bytes (a multiple of codes per byte)."""
    k = codes_per_byte(bits)
    return -(-n // k) * k


def pack(codes: Tensor, bits: int) -> Tensor:
    """codes: uint8 (..., n) with values < 2**bits and n a multiple of 8 // bits
    -> uint8 (..., n * bits // 8)."""
    k = codes_per_byte(bits)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    n = codes.shape[-1]
    if n % k:
        raise ValueError(f"row length {n} is not a multiple of {k} (pad rows with padded_length first)")
    if codes.numel() and int(codes.max()) >= 1 << bits:
        raise ValueError(f"a code exceeds {bits} bits (max {int(codes.max())})")
    if k == 1:
        return codes.contiguous()
    planes = codes.reshape(*codes.shape[:-1], k, n // k)
    out = planes[..., 0, :].clone()
    for i in range(1, k):
        out |= planes[..., i, :] << (bits * i)
    return out


def unpack(packed: Tensor, bits: int) -> Tensor:
    """Inverse of :func:`pack`: uint8 (..., m) -> uint8 (..., m * 8 // bits)."""
    k = codes_per_byte(bits)
    if k == 1:
        return packed
    mask = (1 << bits) - 1
    m = packed.shape[-1]
    # write each plane into its slice of one output: no concatenation copy
    out = torch.empty(*packed.shape[:-1], k, m, dtype=torch.uint8, device=packed.device)
    for i in range(k):
        torch.bitwise_and(packed >> (bits * i), mask, out=out[..., i, :])
    return out.reshape(*packed.shape[:-1], k * m)
