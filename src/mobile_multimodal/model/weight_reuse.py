"""A scope in which modules keep tensors they derive from their weights, for one call.

Autoregressive decoding runs every decoder layer once per generated token. A packed INT2/INT4/
INT8 layer rebuilds its float weight from the codes on every forward, so a 15-token caption
dequantized each decoder weight 15 times: that, not the matmuls, made INT2 captioning 3x slower
than fp32 on the CPU. Inside :func:`reuse_weights` such a layer dequantizes once and reuses the
result until the scope ends; outside it (and after it) nothing is kept, so the resident memory
stays that of the packed weights. The scope is a ContextVar: threads and tasks each see their own.

Example::

    with reuse_weights():
        for _ in range(max_new_tokens):
            x = decoder_step(x)        # each packed layer dequantizes on its first call only
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

_SCOPE: contextvars.ContextVar[dict[nn.Module, Tensor] | None] = contextvars.ContextVar(
    "mm_weight_reuse", default=None
)


@contextmanager
def reuse_weights() -> Iterator[None]:
    """Let modules keep derived weights until the block ends (nested scopes share the outer one)."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set({})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def reuse_cache() -> dict[nn.Module, Tensor] | None:
    """The active scope's cache (module -> tensor), or None outside a scope."""
    return _SCOPE.get()
