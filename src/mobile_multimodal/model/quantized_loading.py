"""Loading a quantized variant's weights into the network: the planned layers become packed
modules (``quantized_layers.py``) and every tensor of the variant's safetensors is loaded.

The manifest's ``quantization.layers`` table says which layer is stored how (``LayerSpec`` and
the float weight's shape); nothing is inferred from a file name. Every mismatch between the
file, the table and the architecture is a ``ModelLoadError`` with a code, never a crash.
``mobile_multimodal.quantization.variant_io`` writes what this reads.

Example::

    network = MultiModalNet(config)
    load_quantized_into(network, checkpoint.load_state(directory, manifest), manifest["quantization"])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.model.packing import padded_length
from mobile_multimodal.model.quantized_layers import quantized_module, replace_module
from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight, num_groups

PACKED_SUFFIXES = (".qweight", ".scales", ".zeros")


def alias_prefixes(network: nn.Module) -> dict[str, str]:
    """Tied modules: every name after the first under which the same module is reachable ->
    its first name (the token embedding is reachable as embeddings, decoder.tok, ...)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, module in network.named_modules(remove_duplicate=False):
        if id(module) in first and name:
            aliases[name] = first[id(module)]
        else:
            first.setdefault(id(module), name)
    return aliases


def is_alias_key(key: str, aliases: dict[str, str]) -> bool:
    return any(key.startswith(prefix + ".") for prefix in aliases)


def _packed_weight(name: str, spec: LayerSpec, shape: list[int], state: dict[str, Tensor]) -> QuantizedWeight:
    try:
        packed, scales, zeros = (state[name + s] for s in PACKED_SUFFIXES)
    except KeyError as e:
        raise ModelLoadError(
            f"quantized layer {name} lacks {e.args[0]} in the weights file", code="MODEL_WEIGHTS_INVALID"
        ) from e
    out, n = shape[0], math.prod(shape[1:])
    gs = n if spec.group_size is None else min(spec.group_size, n)
    want_packed = (out, padded_length(n, spec.bits) * spec.bits // 8)
    want_groups = (out, num_groups(n, gs))
    if (
        packed.dtype != torch.uint8
        or tuple(packed.shape) != want_packed
        or tuple(scales.shape) != want_groups
        or tuple(zeros.shape) != want_groups
    ):
        raise ModelLoadError(
            f"{name}: packed tensors {tuple(packed.shape)}/{tuple(scales.shape)} do not match a "
            f"{spec.bits}-bit weight of shape {tuple(shape)} with group size {gs}",
            code="MODEL_WEIGHTS_INVALID",
        )
    return QuantizedWeight(packed, scales, zeros, spec.bits, gs, tuple(shape))


def load_quantized_into(network: nn.Module, state: dict[str, Tensor], section: dict[str, Any]) -> None:
    """Swap the planned layers of a freshly built float ``network`` for packed modules and load
    every tensor of ``state`` (a variant's safetensors) into it. Raises ModelLoadError."""
    layers = section.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ModelLoadError(
            "the manifest's quantization section has no per-layer 'layers' table",
            code="MODEL_MANIFEST_INVALID",
        )
    aliases = alias_prefixes(network)
    for name, entry in layers.items():
        try:
            spec = LayerSpec.from_dict(entry)
            shape = [int(x) for x in entry["shape"]]
            module = network.get_submodule(name)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"quantization layer {name!r}: {e}", code="MODEL_MANIFEST_INVALID") from e
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or list(weight.shape) != shape:
            raise ModelLoadError(
                f"quantized layer {name} has shape {shape}, the architecture expects "
                f"{None if weight is None else list(weight.shape)}",
                code="MODEL_WEIGHTS_INVALID",
            )
        try:
            new = quantized_module(_packed_weight(name, spec, shape, state), module)
        except TypeError as e:
            raise ModelLoadError(f"layer {name}: {e}", code="MODEL_MANIFEST_INVALID") from e
        replace_module(network, module, new)
    floats = {
        k: (v.float() if v.is_floating_point() and not k.endswith(PACKED_SUFFIXES) else v)
        for k, v in state.items()
    }
    missing, unexpected = network.load_state_dict(floats, strict=False)
    missing = [k for k in missing if not is_alias_key(k, aliases)]
    if missing or unexpected:
        raise ModelLoadError(
            f"quantized weights do not match the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}",
            code="MODEL_WEIGHTS_INVALID",
        )
    network.eval()
