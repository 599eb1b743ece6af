"""Re-estimating BatchNorm running statistics after training ("precise BN", Wu & Johnson 2021).

The running averages kept during training trail weights that kept changing; a pass over
fresh training batches with the final weights gives each domain's (scene, text line) exact
statistics. Only BatchNorm buffers change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.model.norm import DomainBatchNorm2d
from mobile_multimodal.training.batches import Batch


@torch.no_grad()
def recalibrate_batchnorm(
    net: MultiModalNet, batches: Callable[[int], Batch], steps: int, first_step: int
) -> None:
    """Reset every DomainBatchNorm2d and average its statistics over `steps` batches
    (batches(first_step) .. batches(first_step + steps - 1)), each domain separately."""
    norms = [m for m in net.modules() if isinstance(m, DomainBatchNorm2d)]
    was_training = net.training
    saved_momentum = [m.momentum for m in norms]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.running_mean_line.zero_()
        m.running_var_line.fill_(1.0)
        m.num_batches_tracked_line.zero_()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    for step in range(first_step, first_step + steps):
        batch = batches(step)
        net.encode_images(batch.images)
        net.read_text(batch.ocr_images)
    for m, momentum in zip(norms, saved_momentum, strict=True):
        m.momentum = momentum
    net.train(was_training)
