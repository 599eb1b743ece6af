"""The stored format of a quantized weight and of a layer's precision (model/quantized_weight.py)."""

from __future__ import annotations

import pytest
import torch

from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight, from_codes, num_groups


def test_codes_pack_and_dequantize_exactly() -> None:
    codes = torch.tensor([[0, 1, 2, 3, 3], [2, 2, 0, 1, 3]], dtype=torch.uint8)  # 5 columns: padded to 8
    scale = torch.tensor([[0.5, 2.0], [1.0, 0.25]])  # groups of 4 columns: 2 groups per row
    zero = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    qw = from_codes(codes, scale, zero, bits=2, group_size=4, shape=(2, 5))
    assert qw.packed.dtype == torch.uint8 and tuple(qw.packed.shape) == (2, 2)  # 4 codes per byte
    assert torch.equal(qw.codes(), codes)
    expected = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 6.0], [0.0, 0.0, -2.0, -1.0, 0.0]])
    assert torch.equal(qw.dequantize(), expected)
    assert qw.bits_per_weight() == 8 * (4 + 8 + 8) / 10  # packed bytes + float16 scales and zeros


def test_num_groups_counts_a_short_last_group() -> None:
    assert (num_groups(160, 80), num_groups(161, 80), num_groups(1, 80)) == (2, 3, 1)


def test_layer_spec_round_trips_and_refuses_what_it_cannot_store() -> None:
    spec = LayerSpec(2, 80, "linear")
    assert LayerSpec.from_dict(spec.to_dict()) == spec
    assert LayerSpec.from_dict({"bits": "8", "group_size": None, "kind": "embedding"}) == LayerSpec(
        8, None, "embedding"
    )
    for bad in (
        {"bits": 3, "group_size": 80, "kind": "linear"},
        {"bits": 2, "kind": "linear"},
        {"bits": 2, "group_size": 8, "kind": "lstm"},
    ):
        with pytest.raises(ValueError, match="invalid layer spec"):
            LayerSpec.from_dict(bad)
    assert isinstance(
        from_codes(torch.zeros(1, 8, dtype=torch.uint8), torch.ones(1, 1), torch.zeros(1, 1), 8, 8, (1, 8)),
        QuantizedWeight,
    )
