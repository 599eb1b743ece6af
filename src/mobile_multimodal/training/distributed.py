"""``mobile-mm train --nproc N``: data-parallel training over torch.distributed.

The meaning of a run does not change with N: ``--steps`` counts optimizer steps, the preset's
batch sizes are the *global* batch, and the seed fixes the data. Every process builds the same
global batch for a step (batches are a pure function of seed and step, batches.py) and keeps
every N-th row of each part (captions, VQA rows, OCR lines) -- so N processes see exactly the
examples one process would. Gradients are averaged with one all-reduce per step, the clipped
step is then the same everywhere and the replicas stay identical without re-broadcasting
weights. What differs from one process: the contrastive loss's negatives and BatchNorm's batch
statistics come from a process's own shard (no SyncBatchNorm on CPU), and per-task token means
are averaged per shard; tests/training/test_distributed.py bounds the effect on the loss curve.
Building the whole global batch in each process duplicates data generation (CPU work that
grows with N); it is what buys the identical data.

Rank 0 writes train_log.jsonl (losses averaged over the ranks: the global batch's), the
checkpoints (every process resumes from the same OUT/checkpoint.pt) and the final model; it
alone recalibrates BatchNorm and evaluates. Backend: gloo on CPU, NCCL when the device is CUDA
(one GPU per process, ``cuda:LOCAL_RANK``). The launcher sets torchrun's variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so ``torchrun --nproc-per-node N -m
mobile_multimodal.training.distributed '<options JSON>'`` runs the same workers.

Example::

    launch(TrainOptions(out=Path("runs/dp"), preset="tiny", seed=0), nproc=2)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mobile_multimodal.training.batches import Batch
from mobile_multimodal.training.replicas import SingleProcess
from mobile_multimodal.training.train import PRESETS, TrainOptions, train_model


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rows ``rank, rank + N, ...`` of each part of the global batch (captions, VQA, OCR lines)."""
    n_rows, n_caption = batch.images.shape[0], batch.n_caption
    captions = torch.arange(rank, n_caption, world_size)
    rows = torch.cat([captions, torch.arange(n_caption + rank, n_rows, world_size)])
    lines = torch.arange(rank, batch.ocr_images.shape[0], world_size)
    starts = torch.cumsum(batch.ocr_target_lengths, 0) - batch.ocr_target_lengths
    targets = [
        batch.ocr_targets[int(starts[i]) : int(starts[i] + batch.ocr_target_lengths[i])] for i in lines
    ]
    return Batch(
        images=batch.images[rows],
        seq_ids=batch.seq_ids[rows],
        seq_valid=batch.seq_valid[rows],
        target_mask=batch.target_mask[rows],
        n_caption=len(captions),
        question_ids=batch.question_ids[rows],
        question_valid=batch.question_valid[rows],
        caption_ids=batch.caption_ids[captions],
        caption_valid=batch.caption_valid[captions],
        ocr_images=batch.ocr_images[lines],
        ocr_targets=torch.cat(targets) if targets else batch.ocr_targets[:0],
        ocr_target_lengths=batch.ocr_target_lengths[lines],
    )


class TorchDistributed(SingleProcess):
    """This process's part in an initialised default process group."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def shard(self, batch: Batch) -> Batch:
        return shard_batch(batch, self.rank, self.world_size)

    def average_gradients(self, net: torch.nn.Module) -> None:
        params = [p for p in net.parameters() if p.requires_grad]
        # A parameter no shard used keeps grad None (AdamW then leaves it alone, as with one
        # process); one that some shard used gets the average, zeros standing in for the others.
        # (on the parameters' device: NCCL reduces CUDA tensors only)
        used = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=params[0].device
        )
        dist.all_reduce(used)
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p, u in zip(params, used.tolist(), strict=True)
            if u > 0
        ]
        flat = torch.cat(grads)
        dist.all_reduce(flat)  # one call for all of them: latency, not bandwidth, dominates here
        flat /= self.world_size
        offset = 0
        for p, u in zip(params, used.tolist(), strict=True):
            if u > 0:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()

    def average_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        names = sorted(losses)
        values = torch.stack([losses[k].detach().float() for k in names])
        dist.all_reduce(values)
        values /= self.world_size
        return dict(zip(names, values.tolist(), strict=True))


def _uses_cuda(device: str) -> bool:
    """Whether training runs on GPUs (then NCCL, one GPU per process), as train_model resolves it."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _options_json(opts: TrainOptions) -> str:
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(opts).items()})


def _options_from_json(text: str) -> TrainOptions:
    raw: dict[str, Any] = json.loads(text)
    for name in ("out", "init_from"):
        if raw.get(name) is not None:
            raw[name] = Path(raw[name])
    return TrainOptions(**raw)


def launch(opts: TrainOptions, nproc: int, timeout_s: float | None = None) -> Path:
    """Train with ``nproc`` processes on this machine; returns OUT like ``train_model``."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return train_model(opts)
    preset = PRESETS.get(opts.preset)
    if preset is None:
        raise ValueError(f"unknown preset {opts.preset!r}; choose one of {sorted(PRESETS)}")
    smallest = min(preset.sizes.caption, preset.sizes.ocr)
    if nproc > smallest:
        raise ValueError(
            f"--nproc {nproc} exceeds the preset's smallest batch part ({smallest} rows): some "
            "process would get no captions or OCR lines"
        )
    gpus = torch.cuda.device_count()
    if _uses_cuda(opts.device) and nproc > gpus:
        # NCCL refuses two ranks on one GPU: say so here, not as N failed processes
        raise ValueError(
            f"--nproc {nproc} on device {opts.device!r} needs one GPU per process; this machine has "
            f"{gpus} (use --nproc {max(gpus, 1)}, or --device cpu for gloo)"
        )
    if opts.threads is None:  # share the cores out, as serve --workers does
        opts = dataclasses.replace(opts, threads=max(1, (os.cpu_count() or 1) // nproc))
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    base |= {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mobile_multimodal.training.distributed", _options_json(opts)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )
        for rank in range(nproc)
    ]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        # One failed rank would leave the others blocked in an all-reduce: stop them all.
        while any(p.poll() is None for p in procs):
            failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                raise RuntimeError(f"training process(es) failed (rank, exit code): {failed}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"distributed training ran past {timeout_s} s")
            time.sleep(0.2)
        failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"training process(es) failed (rank, exit code): {failed}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return opts.out


def run_worker(opts: TrainOptions) -> Path:
    """One rank, from torchrun's environment variables: join the group, train, leave."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = _uses_cuda(opts.device)
    if cuda:
        torch.cuda.set_device(local_rank)
        opts = dataclasses.replace(opts, device=f"cuda:{local_rank}")
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    try:
        return train_model(opts, TorchDistributed())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_worker(_options_from_json(sys.argv[1]))
