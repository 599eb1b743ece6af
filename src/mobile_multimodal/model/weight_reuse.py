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
def reuse_weights(cache: dict[nn.Module, Tensor] | None = None) -> Iterator[None]:
    """Let modules keep derived weights until the block ends (nested scopes share the outer one).
    ``cache``: keep them in this dict instead of a fresh one, so a caller whose work spans several
    calls (a running decode batch, ``decode_batch.py``) dequantizes once for all of them and frees
    the weights by dropping the dict."""
    if _SCOPE.get() is not None:
        yield
        return
    token = _SCOPE.set({} if cache is None else cache)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def reuse_cache() -> dict[nn.Module, Tensor] | None:
    """The active scope's cache (module -> tensor), or None outside a scope."""
    return _SCOPE.get()
