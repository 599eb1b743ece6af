"""FakeQuantLinear: a Linear that trains through its own quantization (for QAT).

The forward pass uses exactly the weight the packed model will use: codes
``q = clamp(round(w / s + z), 0, qmax)`` and ``ŵ = (q - z) * s`` with the float16 values of the
scale and zero point. Rounding passes gradients straight through (Bengio et al. 2013), so the
latent float weight, the per-group log-scale and the zero point all learn (as in LSQ, Esser et
al. 2020). ``to_quantized()`` then rounds once more and packs: the result computes what the
fake-quantized layer computed.

Example::

    fq = FakeQuantLinear.from_quantized(linear, gptq_result)   # start where GPTQ ended
    loss(fq(x)).backward()
    qw = fq.to_quantized()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.quantized_weight import QuantizedWeight, dequantize_codes, from_codes, num_groups
from mobile_multimodal.quantization.schemes import MIN_SCALE, qmax


def _ste(x: Tensor, rounded: Tensor) -> Tensor:
    """Value of ``rounded``, gradient of ``x``."""
    return x + (rounded - x).detach()


class FakeQuantLinear(nn.Module):
    def __init__(
        self, weight: Tensor, bias: Tensor | None, scale: Tensor, zero: Tensor, bits: int, group_size: int
    ) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size
        out, n = weight.shape
        if scale.shape != (out, num_groups(n, group_size)) or zero.shape != scale.shape:
            raise ValueError(
                f"group parameters {tuple(scale.shape)} do not fit a {tuple(weight.shape)} weight "
                f"with group size {group_size}"
            )
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        self.log_scale = nn.Parameter(scale.detach().float().clamp(min=MIN_SCALE).log())
        self.zero = nn.Parameter(zero.detach().float().clone())

    @classmethod
    def from_quantized(cls, linear: nn.Linear, qw: QuantizedWeight) -> FakeQuantLinear:
        """Start from a quantized solution: latent weights at its dequantized values (the centres
        of their quantization bins), with its scales and zero points."""
        return cls(qw.dequantize(), linear.bias, qw.scales.float(), qw.zeros.float(), qw.bits, qw.group_size)

    def _params(self) -> tuple[Tensor, Tensor]:
        s = self.log_scale.exp().clamp(min=MIN_SCALE)
        z = self.zero.clamp(0, qmax(self.bits))
        return _ste(s, s.half().float()), _ste(z, z.half().float())

    def _codes(self, s: Tensor, z: Tensor) -> Tensor:
        out, n = self.weight.shape
        ng = s.shape[1]
        w: Tensor = self.weight
        if ng * self.group_size != n:
            w = F.pad(w, (0, ng * self.group_size - n))
        x = w.reshape(out, ng, self.group_size) / s[..., None] + z[..., None]
        q = _ste(x, torch.round(x)).clamp(0, qmax(self.bits))
        return q.reshape(out, -1)[:, :n]

    def quantized_weight(self) -> Tensor:
        s, z = self._params()
        return dequantize_codes(self._codes(s, z), s, z, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    @torch.no_grad()
    def to_quantized(self) -> QuantizedWeight:
        s, z = self._params()
        codes = self._codes(s, z).round().to(torch.uint8)
        return from_codes(codes, s, z, self.bits, self.group_size, tuple(self.weight.shape))
