"""How the training loop shares a step with other processes; :class:`SingleProcess` shares nothing.

``train_model`` asks four things of it each step: which rows of the global batch are this
process's (:meth:`shard`), to turn this process's gradients into the global ones
(:meth:`average_gradients`), the global batch's losses for the log (:meth:`average_losses`), and
whether this process writes the log, checkpoints and the model (:attr:`is_main`).
training/distributed.py implements them over torch.distributed for ``train --nproc N``.

Example::

    replicas = SingleProcess()
    batch = replicas.shard(builder.build(step))     # the whole batch: one process does it all
"""

from __future__ import annotations

import torch

from mobile_multimodal.training.batches import Batch


class SingleProcess:
    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Batch) -> Batch:
        return batch

    def average_gradients(self, net: torch.nn.Module) -> None:
        """Nothing to average: this process's gradients are the global batch's."""

    def average_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        return {k: v.item() for k, v in losses.items()}
