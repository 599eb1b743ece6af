"""Round-to-nearest (RTN): each planned weight quantized on its own, from its min and max.

The baseline every other method must beat; no data needed.

Example::

    plan = make_plan(model.network, bits=4)
    quantized = quantize_rtn_layers(model.network, plan)
"""

from __future__ import annotations

from torch import Tensor, nn

from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight
from mobile_multimodal.quantization.schemes import layer_zero_points, quantize_rtn


def layer_weight(network: nn.Module, name: str) -> Tensor:
    weight = network.get_submodule(name).weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"layer {name} has no float weight")
    return weight.detach()


def quantize_rtn_layers(
    network: nn.Module, plan: dict[str, LayerSpec], clip_search: bool = False, zero_points: str = "whole"
) -> dict[str, QuantizedWeight]:
    return {
        name: quantize_rtn(
            layer_weight(network, name),
            spec.bits,
            spec.group_size,
            clip_search,
            layer_zero_points(zero_points, name),
        )
        for name, spec in plan.items()
    }
