"""Writing a quantized variant directory (model.safetensors + manifest.json).

The safetensors file holds, for every quantized layer ``L``, ``L.qweight`` (packed uint8 codes),
``L.scales`` and ``L.zeros`` (float16), and every other tensor (biases, norms, position tables)
as float16. The manifest's ``quantization`` section says how to read them: mode, bits, group
size, method, policy and each layer's own precision; nothing is inferred from a file name.

Example::

    save_variant(out_dir, fp32_model, network, quantized, plan, method="gptq")
    m = MobileMultiModalLLM.from_pretrained(out_dir)    # model/quantized_loading.py reads it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.quantized_loading import alias_prefixes, is_alias_key
from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight
from mobile_multimodal.quantization.policy import POLICY_NAME

OTHER_DTYPE = torch.float16
SCHEME = "affine group-wise: w = (q - zero) * scale; codes packed planar, 8/bits per byte"


def mode_name(bits: int) -> str:
    return f"int{bits}"


def variant_state(network: nn.Module, quantized: dict[str, QuantizedWeight]) -> dict[str, Tensor]:
    """What goes into the variant's safetensors: packed layers, and every other float tensor of
    ``network`` (which must still be the float network) as float16."""
    aliases = alias_prefixes(network)
    state: dict[str, Tensor] = {}
    for name, qw in quantized.items():
        state[f"{name}.qweight"], state[f"{name}.scales"], state[f"{name}.zeros"] = (
            qw.packed,
            qw.scales,
            qw.zeros,
        )
    for key, value in network.state_dict().items():
        if is_alias_key(key, aliases) or key.removesuffix(".weight") in quantized:
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
