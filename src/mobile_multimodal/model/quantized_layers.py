"""Modules that compute with packed weights: QuantLinear, QuantConv2d, QuantEmbedding.

Each holds its weight as the packed codes and float16 group parameters of a
``QuantizedWeight`` (buffers ``qweight``, ``scales``, ``zeros``): that is all the weight memory
it keeps. ``forward`` unpacks and dequantizes the weight on the fly, then runs the float op;
inside a ``reuse_weights()`` scope (the decoder's generation loop) only on its first call.

The alternative is measured in benchmarks/quantization: ``set_weight_cache(network, True)``
keeps each dequantized float weight as a (non-persistent) buffer, which buys fp32 speed at fp32
memory. It is off by default: the memory a phone saves is the point of INT2. The cache is a
buffer so that memory accounting (``component_memory_bytes``) shows what it costs.

Example::

    qw = quantize_rtn(linear.weight, bits=2, group_size=64)
    qlinear = QuantLinear(qw, linear.bias)
    y = qlinear(x)                        # == F.linear(x, qw.dequantize(), linear.bias)
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.packing import unpack
from mobile_multimodal.model.quantized_weight import QuantizedWeight, dequantize_codes
from mobile_multimodal.model.weight_reuse import reuse_cache


class PackedWeight(nn.Module):
    """Base: the packed buffers of one weight and how to turn them back into floats."""

    qweight: Tensor
    scales: Tensor
    zeros: Tensor

    def __init__(self, qw: QuantizedWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.bits = qw.bits
        self.group_size = qw.group_size
        self.weight_shape = tuple(qw.shape)
        self.register_buffer("qweight", qw.packed.clone())
        self.register_buffer("scales", qw.scales.clone())
        self.register_buffer("zeros", qw.zeros.clone())
        self.bias: Tensor | None
        if bias is not None:
            self.register_buffer("bias", bias.detach().float().clone())
        else:
            self.bias = None

    @property
    def in_features(self) -> int:
        return math.prod(self.weight_shape[1:])

    def quantized(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.weight_shape
        )

    def dequantized_weight(self) -> Tensor:
        """The float weight: the cached copy when caching is on, else rebuilt from the codes (once
        per :func:`~mobile_multimodal.model.weight_reuse.reuse_weights` scope, as in decoding)."""
        cached = self._buffers.get("weight_cache")
        if cached is not None:
            return cached
        scope = reuse_cache()
        if scope is None:
            return self._dequantize()
        weight = scope.get(self)
        if weight is None:
            weight = scope[self] = self._dequantize()
        return weight

    def _dequantize(self) -> Tensor:
        n, gs = self.in_features, self.group_size
        out, ng = self.scales.shape
        w = unpack(self.qweight, self.bits)[:, :n].float()
        if ng * gs != n:
            w = F.pad(w, (0, ng * gs - n))
        # in place on the fresh float tensor: fewer temporaries on the decode hot path
        g = w.view(out, ng, gs).sub_(self.zeros[..., None]).mul_(self.scales[..., None])
        return g.view(out, ng * gs)[:, :n].reshape(self.weight_shape)

    def extra_repr(self) -> str:
        return f"shape={self.weight_shape}, bits={self.bits}, group_size={self.group_size}"


class QuantLinear(PackedWeight):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)


class QuantConv2d(PackedWeight):
    def __init__(self, qw: QuantizedWeight, conv: nn.Conv2d) -> None:
        super().__init__(qw, conv.bias)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x,
            self.dequantized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class QuantEmbedding(PackedWeight):
    """A token embedding with one group per row (per token). ``weight`` dequantizes the whole
    table, for the tied output head (logits = h @ weight.T); a lookup only unpacks its rows."""

    @property
    def weight(self) -> Tensor:
        return self.dequantized_weight()

    def forward(self, ids: Tensor) -> Tensor:
        cached = self._buffers.get("weight_cache")
        if cached is not None:
            return F.embedding(ids, cached)
        flat = ids.reshape(-1)
        codes = unpack(self.qweight[flat], self.bits)[:, : self.in_features]
        rows = dequantize_codes(codes, self.scales[flat], self.zeros[flat], self.group_size)
        return rows.reshape(*ids.shape, self.in_features)


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> int:
    """Swap every reference to ``old`` inside ``root`` for ``new`` (a tied module is referenced
    from several parents). Returns how many references were swapped."""
    swapped = 0
    for parent in root.modules():
        for name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[name] = new
                swapped += 1
    return swapped


def quantized_module(qw: QuantizedWeight, original: nn.Module) -> PackedWeight:
    """The packed counterpart of a float Linear, Conv2d or Embedding."""
    if isinstance(original, nn.Linear):
        return QuantLinear(qw, original.bias)
    if isinstance(original, nn.Conv2d):
        return QuantConv2d(qw, original)
    if isinstance(original, nn.Embedding):
        return QuantEmbedding(qw)
    raise TypeError(f"cannot quantize a {type(original).__name__}")


def set_weight_cache(network: nn.Module, enabled: bool) -> int:
    """Keep (or drop) a dequantized float copy of every packed weight in ``network``, trading
    memory for speed. Returns the number of modules changed."""
    changed = 0
    for module in network.modules():
        if isinstance(module, PackedWeight):
            if enabled:
                module.register_buffer("weight_cache", module._dequantize(), persistent=False)
            else:
                module._buffers.pop("weight_cache", None)
            changed += 1
    return changed
