"""Mixed-precision policy: which layer is stored at how many bits, written into the manifest.

The weights that touch the model's inputs and outputs are few and sensitive, so they stay at
INT8 (per output channel) whatever the target:

- ``embeddings``: the token embedding, which is also the decoder's output head (tied);
- the patch embedding: the conv stem, its full-resolution scene stage where the model has one,
  and the projections of its features into tokens (``encoder.stem.*``,
  ``encoder.scene_detail.*``, ``encoder.proj``, ``encoder.column_proj``);
- ``ocr_head.fc2``: the CTC output layer.

Every other Linear (attention, MLP, the OCR head's hidden layer, retrieval projections) is
stored at the target width, group-wise. Norms, biases and position tables stay float16.

Example::

    plan = make_plan(network, bits=2, group_size=80)
    plan["decoder.blocks.0.mlp.fc1"]     # LayerSpec(bits=2, group_size=80, kind='linear')
    plan["embeddings"]                   # LayerSpec(bits=8, group_size=None, kind='embedding')
"""

from __future__ import annotations

from torch import nn

from mobile_multimodal.model.quantized_weight import LayerSpec

POLICY_NAME = "int8-io-v1"
INT8_LAYERS = ("embeddings", "encoder.proj", "encoder.column_proj", "ocr_head.fc2")
INT8_PREFIXES = ("encoder.stem.", "encoder.scene_detail.")
# Our default group size: the model's widths (160, 400) are multiples of 80, so rows split into
# whole groups; 80 also keeps the INT2 file under a tenth of the fp32 one (see DESIGN notes in
# benchmarks/quantization/README.md).
DEFAULT_GROUP_SIZE = 80


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return None


def is_io_layer(name: str) -> bool:
    return name in INT8_LAYERS or name.startswith(INT8_PREFIXES)


def make_plan(network: nn.Module, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> dict[str, LayerSpec]:
    """Layer name -> LayerSpec for every weight the policy quantizes."""
    if bits not in (2, 4, 8):
        raise ValueError(f"--bits must be 8, 4 or 2, got {bits}")
    if group_size < 1:
        raise ValueError(f"--group-size must be >= 1, got {group_size}")
    if not hasattr(network, "embeddings") or not isinstance(network.embeddings, nn.Embedding):
        raise ValueError("the network has no float token embedding to quantize (already quantized?)")
    plan = {"embeddings": LayerSpec(8, None, "embedding")}
    for name, module in network.named_modules():
        kind = _kind(module)
        if kind is None:
            continue
        if bits == 8 or is_io_layer(name):
            plan[name] = LayerSpec(8, None, kind)
        else:
            plan[name] = LayerSpec(bits, group_size, kind)
    return plan
