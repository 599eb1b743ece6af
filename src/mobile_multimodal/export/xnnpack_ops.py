"""Attention and LayerNorm written with the ops XNNPACK delegates, as export decompositions.

ExecuTorch's XNNPACK partitioner delegates matmul, softmax over the last dim, elementwise
arithmetic, ``rsqrt`` and a mean over the two innermost dims of a 4-D tensor (global average
pooling) — but not ``native_layer_norm``, and not the ``where``/``logical_not``/``any`` that the
stock ``scaled_dot_product_attention`` decomposition uses for a boolean mask. Left alone, every
LayerNorm and every masked attention splits the XNNPACK graph and runs on the portable kernels.
These decompositions, applied with ``ExportedProgram.run_decompositions``, keep them inside
XNNPACK: the mean is taken on a (N, 1, D, 1) view, the mask becomes an additive bias. Three
more rewrite ops XNNPACK lacks into ones it has, so fewer ops split the delegated graph:
``split`` (our K/V ``chunk``) and ``select`` (a layer's slice of the stacked KV cache) into
slices, and a float ``where`` (the cache write) into ``a * c + b * (1 - c)`` — exact for finite
values, since one term is multiplied by exactly 0 and the other by exactly 1.

Example::

    program = torch.export.export(module, inputs).run_decompositions(XNNPACK_DECOMPOSITIONS)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

# a masked key's score: far below any real score, yet finite (exp underflows to exactly 0)
MASKED_SCORE = -1e9


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask (True = may attend) as the bias added to the scores: 0 where a
    key may be seen, ``MASKED_SCORE`` where not; a float mask is already one and stays as it is."""
    return (1.0 - mask.to(dtype)) * MASKED_SCORE if mask.dtype == torch.bool else mask


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enable: bool = True,
) -> Tensor:
    """LayerNorm over the last dim, its two means taken as global average pooling."""
    if len(normalized_shape) != 1:
        raise ValueError(f"only LayerNorm over the last dim is decomposed, got {list(normalized_shape)}")
    shape = x.shape
    x4 = x.reshape(-1, 1, shape[-1], 1)  # (N, 1, D, 1): the mean over dims 2, 3 is a pooling
    centred = x4 - x4.mean(dim=(2, 3), keepdim=True)
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    y = (centred * torch.rsqrt(var + eps)).reshape(shape)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """softmax(q k^T * scale + mask) v on (B, nh, T, hs) tensors, as two batched matmuls over
    (B * nh) and a boolean mask turned into an additive bias (every query must see a key)."""
    if dropout_p or is_causal or enable_gqa:
        raise ValueError("export graphs use neither dropout, is_causal nor grouped-query attention")
    b, nh, t, hs = q.shape
    s = k.shape[2]
    factor = 1.0 / math.sqrt(hs) if scale is None else scale
    scores = torch.bmm((q * factor).reshape(b * nh, t, hs), k.reshape(b * nh, s, hs).transpose(1, 2))
    if attn_mask is not None:
        bias = additive_mask(attn_mask, q.dtype)
        scores = (scores.reshape(b, nh, t, s) + bias).reshape(b * nh, t, s)
    weights = torch.softmax(scores, dim=-1)
    return torch.bmm(weights, v.reshape(b * nh, s, hs)).reshape(b, nh, t, hs)


def split(x: Tensor, size: int, dim: int = 0) -> list[Tensor]:
    n = x.shape[dim]
    return [x.narrow(dim, start, min(size, n - start)) for start in range(0, n, size)]


def split_with_sizes(x: Tensor, sizes: Sequence[int], dim: int = 0) -> list[Tensor]:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [x.narrow(dim, start, size) for start, size in zip(starts, sizes, strict=True)]


def select(x: Tensor, dim: int, index: int) -> Tensor:
    dim = dim % x.dim()
    shape = [n for i, n in enumerate(x.shape) if i != dim]
    return x.narrow(dim, index % x.shape[dim], 1).reshape(shape)


def where(condition: Tensor, a: Tensor, b: Tensor) -> Tensor:
    if (
        not (isinstance(a, Tensor) and isinstance(b, Tensor))
        or a.dtype != b.dtype
        or not a.is_floating_point()
    ):
        return NotImplemented  # the stock decomposition then applies
    c = condition.to(a.dtype)
    return a * c + b * (1.0 - c)


aten = torch.ops.aten
XNNPACK_DECOMPOSITIONS: dict[Any, Callable[..., Any]] = {
    aten.layer_norm.default: layer_norm,
    aten.scaled_dot_product_attention.default: scaled_dot_product_attention,
    aten.split.Tensor: split,
    aten.split_with_sizes.default: split_with_sizes,
    aten.select.int: select,
    aten.where.self: where,
}
