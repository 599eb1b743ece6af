"""Saving and loading a quantized variant directory (model.safetensors + manifest.json).

The safetensors file holds, for every quantized layer ``L``, ``L.qweight`` (packed uint8 codes),
``L.scales`` and ``L.zeros`` (float16), and every other tensor (biases, norms, position tables)
as float16. The manifest's ``quantization`` section says how to read them: mode, bits, group
size, method, policy and each layer's own precision; nothing is inferred from a file name.

Example::

    save_variant(out_dir, fp32_model, network, quantized, plan, method="gptq")
    m = MobileMultiModalLLM.from_pretrained(out_dir)    # calls load_quantized_into
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.errors import ModelLoadError
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.quantization.packing import padded_length
from mobile_multimodal.quantization.policy import POLICY_NAME, LayerSpec
from mobile_multimodal.quantization.qlinear import quantized_module, replace_module
from mobile_multimodal.quantization.schemes import QuantizedWeight, num_groups

PACKED_SUFFIXES = (".qweight", ".scales", ".zeros")
OTHER_DTYPE = torch.float16
SCHEME = "affine group-wise: w = (q - zero) * scale; codes packed planar, 8/bits per byte"


def mode_name(bits: int) -> str:
    return f"int{bits}"


def _alias_prefixes(network: nn.Module) -> dict[str, str]:
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


def _is_alias_key(key: str, aliases: dict[str, str]) -> bool:
    return any(key.startswith(prefix + ".") for prefix in aliases)


def variant_state(network: nn.Module, quantized: dict[str, QuantizedWeight]) -> dict[str, Tensor]:
    """What goes into the variant's safetensors: packed layers, and every other float tensor of
    ``network`` (which must still be the float network) as float16."""
    aliases = _alias_prefixes(network)
    state: dict[str, Tensor] = {}
    for name, qw in quantized.items():
        state[f"{name}.qweight"], state[f"{name}.scales"], state[f"{name}.zeros"] = (
            qw.packed,
            qw.scales,
            qw.zeros,
        )
    for key, value in network.state_dict().items():
        if _is_alias_key(key, aliases) or key.removesuffix(".weight") in quantized:
            continue
        state[key] = value.to(OTHER_DTYPE) if value.is_floating_point() else value
    return state


def save_variant(
    out: Path,
    source: MobileMultiModalLLM,
    network: nn.Module,
    quantized: dict[str, QuantizedWeight],
    plan: dict[str, LayerSpec],
    method: str,
    bits: int,
    group_size: int | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out``/model.safetensors and its manifest. ``source`` is the fp32 model (its
    manifest supplies config, tokenizer and provenance); ``network`` supplies the float tensors
    (the fp32 network, or the one QAT fine-tuned). Returns the manifest."""
    missing = set(plan) - set(quantized)
    if missing:
        raise ValueError(f"layers planned but not quantized: {sorted(missing)[:5]}")
    section: dict[str, Any] = {
        "mode": mode_name(bits),
        "bits": bits,
        "group_size": group_size,
        "method": method,
        "policy": POLICY_NAME,
        "scheme": SCHEME,
        "scale_dtype": "float16",
        "other_dtype": "float16",
        "layers": {name: {**plan[name].to_dict(), "shape": list(quantized[name].shape)} for name in plan},
        **(extra or {}),
    }
    keep = ("name", "version", "data_version", "training")
    manifest = {
        **{k: v for k, v in source.manifest.items() if k in keep},
        "name": source.manifest.get("name", "mobile-multimodal-llm"),
        "config": source.config.to_dict(),
        "tokenizer": source.tokenizer.to_dict(),
        "quantization": section,
    }
    return checkpoint.save_state(out, variant_state(network, quantized), manifest)


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
    aliases = _alias_prefixes(network)
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
    missing = [k for k in missing if not _is_alias_key(k, aliases)]
    if missing or unexpected:
        raise ModelLoadError(
            f"quantized weights do not match the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}",
            code="MODEL_WEIGHTS_INVALID",
        )
    network.eval()
