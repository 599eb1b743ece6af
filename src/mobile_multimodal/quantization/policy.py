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

One exception keeps the INT2 file under a tenth of the fp32 one (``INT4_AT_INT2``): the OCR
reader's column projection (``encoder.column_proj``, the largest INT8 Linear: 61,440 weights in
the printable-ASCII model that reads 32x512 lines) is stored at 4 bits, group-wise, in an INT2
variant. With it at INT8 that model's INT2 file was 0.101x fp32 (issue 18).

Example::

    plan = make_plan(network, bits=2, group_size=80)
    plan["decoder.blocks.0.mlp.fc1"]     # LayerSpec(bits=2, group_size=80, kind='linear')
    plan["embeddings"]                   # LayerSpec(bits=8, group_size=None, kind='embedding')
"""

from __future__ import annotations

from torch import nn

from mobile_multimodal.model.quantized_weight import LayerSpec

POLICY_NAME = "int8-io-v2"  # v1: the same, with encoder.column_proj at INT8 in INT2 variants too
INT8_LAYERS = ("embeddings", "encoder.proj", "encoder.column_proj", "ocr_head.fc2")
INT8_PREFIXES = ("encoder.stem.", "encoder.scene_detail.")
INT4_AT_INT2 = ("encoder.column_proj",)
# the groups of an INT4_AT_INT2 layer: the first of these that divides its inputs (384 = 4 x 96;
# all are multiples of 16, so every group maps onto ONNX MatMulNBits blocks exactly)
INT4_GROUPS = (96, 80, 64, 48, 32, 16)
# Our default group size: the model's widths (160, 400) are multiples of 80, so rows split into
# whole groups; 80 also kept the first models' INT2 file under a tenth of the fp32 one (see DESIGN
# notes in benchmarks/quantization/README.md); the printable-ASCII model needs INT4_AT_INT2 too.
DEFAULT_GROUP_SIZE = 80


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return None


def is_io_layer(name: str) -> bool:
    return name in INT8_LAYERS or name.startswith(INT8_PREFIXES)


def _group_dividing(inputs: int) -> int | None:
    """The first of ``INT4_GROUPS`` that divides ``inputs`` (None: one group per output row)."""
    return next((g for g in INT4_GROUPS if inputs % g == 0), None)


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
        if bits == 2 and name in INT4_AT_INT2 and kind == "linear":
            plan[name] = LayerSpec(4, _group_dividing(module.in_features), kind)
        elif bits == 8 or is_io_layer(name):
            plan[name] = LayerSpec(8, None, kind)
        else:
            plan[name] = LayerSpec(bits, group_size, kind)
    return plan
