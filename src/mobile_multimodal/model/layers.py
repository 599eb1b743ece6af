"""Transformer building blocks: attention (self, causal with a KV cache, cross) and MLP.

Attention is written with plain Linear layers and ``scaled_dot_product_attention`` so the
quantizer can swap every Linear for a packed one, and exporters see simple ops.

References: Vaswani et al. 2017 (attention); pre-norm blocks as in GPT-2 / ViT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = tuple[Tensor, Tensor]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def project_kv(self, source: Tensor) -> KVCache:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: Tensor,
        source: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        append_to_cache: bool = False,
    ) -> tuple[Tensor, KVCache]:
        """x: (B, T, D). source: keys/values come from here (cross-attention) else from x.
        mask: bool (B, 1, T, S), True = may attend. cache: precomputed (k, v); with
        append_to_cache the new keys/values of x are appended (incremental decoding)."""
        q = self._split(self.q(x))
        if cache is not None and not append_to_cache:
            k, v = cache
        else:
            k, v = self.project_kv(x if source is None else source)
            if cache is not None:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention block (bidirectional)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)[0]
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the image tokens, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(
        self,
        x: Tensor,
        self_mask: Tensor,
        image_kv: KVCache,
        self_cache: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        h, new_cache = self.self_attn(self.norm1(x), mask=self_mask, cache=self_cache, append_to_cache=True)
        x = x + h
        x = x + self.cross_attn(self.norm2(x), cache=image_kv)[0]
        return x + self.mlp(self.norm3(x)), new_cache
