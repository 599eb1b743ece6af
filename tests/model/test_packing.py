from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_multimodal.model.packing import pack, padded_length, unpack


@settings(max_examples=200, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    rows=st.integers(1, 6),
    per_row=st.integers(0, 24),
    seed=st.integers(0, 2**31),
)
def test_pack_then_unpack_is_the_identity(bits: int, rows: int, per_row: int, seed: int) -> None:
    k = 8 // bits
    n = per_row * k
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (rows, n), generator=gen, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == rows * n * bits // 8  # truly packed: bits/8 bytes per code
    assert torch.equal(unpack(packed, bits), codes)


@given(bits=st.sampled_from([2, 4, 8]), n=st.integers(0, 100))
def test_padded_length_is_the_next_whole_byte(bits: int, n: int) -> None:
    p = padded_length(n, bits)
    assert p >= n and p - n < 8 // bits and (p * bits) % 8 == 0


def test_planar_layout_is_as_documented() -> None:
    # 8 two-bit codes -> planes [0,1] [2,3] [3,2] [1,0]; byte j holds code j of each plane
    codes = torch.tensor([[0, 1, 2, 3, 3, 2, 1, 0]], dtype=torch.uint8)
    packed = pack(codes, 2)
    assert packed.tolist() == [[0 | 2 << 2 | 3 << 4 | 1 << 6, 1 | 3 << 2 | 2 << 4 | 0 << 6]]
    assert pack(torch.tensor([[5, 12]], dtype=torch.uint8), 4).tolist() == [[5 | 12 << 4]]


def test_pack_rejects_what_it_cannot_store() -> None:
    with pytest.raises(ValueError, match="exceeds 2 bits"):
        pack(torch.tensor([[4, 0, 0, 0]], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        pack(torch.zeros(1, 6, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="unsupported bit width"):
        pack(torch.zeros(1, 6, dtype=torch.uint8), 3)
    with pytest.raises(TypeError, match="uint8"):
        pack(torch.zeros(1, 4, dtype=torch.int64), 2)
