"""DomainBatchNorm2d: BatchNorm with one set of running statistics per input domain.

Shared by every conv stem (``vision.py``'s own, ``efficientnet_stem.py``'s borrowed one) and
found by type in ``training/bn_calibration.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DOMAINS = ("scene", "line")


class DomainBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with one set of running statistics per input domain ("scene", "line").

    Training normalises each domain's batch by its own statistics (scenes and text lines go
    through the stem in separate forward passes), so inference must too: one shared set of
    running statistics would be a blend of both domains and shift every activation of either.
    The inherited buffers hold the scene statistics; the ``*_line`` buffers the text lines'.
    """

    running_mean_line: Tensor
    running_var_line: Tensor
    num_batches_tracked_line: Tensor

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)
        self.register_buffer("running_mean_line", torch.zeros(channels))
        self.register_buffer("running_var_line", torch.ones(channels))
        self.register_buffer("num_batches_tracked_line", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, domain: str = "scene") -> Tensor:
        mean: Tensor | None
        var: Tensor | None
        count: Tensor | None
        if domain == "scene":
            mean, var, count = self.running_mean, self.running_var, self.num_batches_tracked
        elif domain == "line":
            mean, var, count = self.running_mean_line, self.running_var_line, self.num_batches_tracked_line
        else:
            raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
        momentum = self.momentum
        if self.training and count is not None:
            count.add_(1)
            if momentum is None:  # cumulative average, used when re-estimating statistics
                momentum = 1.0 / float(count)
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, momentum or 0.0, self.eps)
