"""The mixed-precision policy: the layers at the model's inputs and outputs stay INT8, except the
OCR reader's column projection in an INT2 variant, stored at 4 bits so that the INT2 file of the
printable-ASCII model stays under a tenth of its fp32 one."""

from __future__ import annotations

import pytest

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.quantized_weight import LayerSpec
from mobile_multimodal.quantization.policy import INT4_AT_INT2, _group_dividing, is_io_layer, make_plan


@pytest.fixture(scope="module")
def network() -> object:
    return MobileMultiModalLLM.from_config(ModelConfig.from_name("tiny"), seed=0).network


@pytest.mark.parametrize(
    ("inputs", "group"), [(384, 96), (160, 80), (320, 80), (64, 64), (48, 48), (40, None)]
)
def test_the_int4_layers_groups_divide_their_inputs(inputs: int, group: int | None) -> None:
    assert _group_dividing(inputs) == group


def test_at_int2_the_column_projection_is_int4_and_every_other_io_layer_int8(network) -> None:
    plan = make_plan(network, bits=2, group_size=80)
    proj = network.get_submodule("encoder.column_proj")
    assert plan["encoder.column_proj"] == LayerSpec(4, _group_dividing(proj.in_features), "linear")
    for name, spec in plan.items():
        if name in INT4_AT_INT2:
            continue
        assert spec.bits == (8 if is_io_layer(name) else 2), name
        assert spec.group_size == (None if is_io_layer(name) else 80), name


@pytest.mark.parametrize("bits", [4, 8])
def test_wider_variants_keep_every_io_layer_at_int8(network, bits: int) -> None:
    plan = make_plan(network, bits=bits, group_size=80)
    assert plan["encoder.column_proj"] == LayerSpec(8, None, "linear")
    assert {spec.bits for name, spec in plan.items() if is_io_layer(name)} == {8}
