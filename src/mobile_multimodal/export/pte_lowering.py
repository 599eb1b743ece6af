"""Lowering the export graphs to XNNPACK ``.pte`` programs, several graphs at a time.

Lowering is the slow part of an ExecuTorch export (profiled: ~90 % of its CPU time, validation
and the bundle's description the rest): ``to_edge_transform_and_lower`` re-traces the whole
graph with fake tensors in each of some forty passes (three decompositions, the edge passes,
seventeen XNNPACK passes, the verifiers), so its cost is passes x nodes, and a low-bit graph has
~1.6x the nodes of its fp32 twin (each quantized Linear is the activation's
choose-qparams/quantize/dequantize, the weight's dequantize and the pad of our groups). Four
things make it faster without touching what the program computes:

- ``pte_passes.fewer_retraces()``: one decomposition instead of four, and no XNNPACK pass whose
  operators the graph lacks (~40 % of the lowering CPU; operators, weights and delegate graphs
  byte for byte the same, debug handles regrouped);
- the graphs are independent, so they are lowered in parallel: this process takes the largest
  graph first while ``processes - 1`` spawned workers take the next ones (spawn, not fork: the
  service exports from a thread of a multi-threaded process);
- ``short_provenance()``: every pass records, on each node it rewrites, a *deep copy* of the
  node's whole provenance chain (``torch.fx.traceback.NodeSource.from_node``), which grows by one
  link per pass: quadratic in the number of passes, ~17 % of the CPU time. Inside the context a
  node keeps only its immediate source. Provenance is debug metadata (the debug handles an
  ETDump profile maps back to); the operators, weights and memory plan are unchanged;
- the edge dialect's IR verifier is off (``EdgeCompileConfig(_check_ir_validity=False)``): it
  re-dispatches every node of the graph with fake tensors after each of a dozen passes to check
  its operators and dtypes, ~25 % of the lowering (INT2 ``decoder_step``: 20.0 against 26.2 s).
  It checks, it rewrites nothing: the programs are byte for byte those of the stock flow with
  the verifier on (``tests/export/test_pte_lowering.py``), and every export runs its ``.pte``
  files in the ExecuTorch runtime against PyTorch before it is written.

Example::

    programs = lower_graphs(
        [LoweringJob("vision", module, quantized, inputs), ...], "int2", processes=2
    )
    programs["vision"]                  # the .pte bytes
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobile_multimodal.export.pte_passes import decompose, fewer_retraces
from mobile_multimodal.export.xnnpack_quant import quantize_for_xnnpack
from mobile_multimodal.quantization.schemes import QuantizedWeight

MAX_PROCESSES = 4  # each lowering process holds ~0.7 GB; more than the graphs' count is idle anyway


@dataclass(frozen=True)
class LoweringJob:
    """One graph to lower: its float module (not modified), the packed weights of its quantized
    layers, and example inputs (static shapes)."""

    name: str
    module: nn.Module
    quantized: Mapping[str, QuantizedWeight]
    example_inputs: tuple[torch.Tensor, ...]

    def size(self) -> int:
        """How big the graph is, to lower the largest first (submodules, a proxy for nodes)."""
        return sum(1 for _ in self.module.modules())


# ---- provenance --------------------------------------------------------------------------------
_patch_lock = threading.Lock()
_patch_users = 0
_original_init: Any = None


def _immediate_source_only(self: Any, node: Any, pass_name: str = "", action: Any = None) -> None:
    _original_init(self, None, pass_name, action)
    if node is not None:
        self.node_info = self.NodeInfo(name=node.name, target=str(node.target), graph_id=id(node.graph))
        self.from_node = []


@contextmanager
def short_provenance() -> Iterator[None]:
    """Nodes rewritten inside keep their immediate source only (see the module docstring).
    Reference-counted, so concurrent exports in one process patch and restore it once."""
    global _patch_users, _original_init
    from torch.fx import traceback as fx_traceback

    with _patch_lock:
        if _patch_users == 0:
            _original_init = fx_traceback.NodeSource.__init__
            fx_traceback.NodeSource.__init__ = _immediate_source_only  # type: ignore[method-assign]
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                fx_traceback.NodeSource.__init__ = _original_init  # type: ignore[method-assign]


# ---- one graph -----------------------------------------------------------------------------------
def lower_to_pte(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> bytes:
    """``module`` exported, decomposed, lowered to XNNPACK and serialised as a ``.pte``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from torchao.utils import unwrap_tensor_subclass

    unwrap_tensor_subclass(module)
    # torch.export and the ExecuTorch passes warn about their own internals (pytree and
    # dataclass deprecations); our warnings-as-errors test config must not turn them into failures
    with warnings.catch_warnings(), torch.no_grad(), short_provenance(), fewer_retraces():
        warnings.simplefilter("ignore")
        program = decompose(torch.export.export(module, example_inputs))
        edge = to_edge_transform_and_lower(
            program,
            partitioner=[XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=False),  # see the module docstring
        )
        return bytes(edge.to_executorch().buffer)


def lower_job(job: LoweringJob, quantization: str) -> bytes:
    """The job's module in XNNPACK's quantized forms (a copy), lowered to ``.pte`` bytes."""
    import copy

    module = copy.deepcopy(job.module).eval()
    quantize_for_xnnpack(module, job.quantized, quantization)
    return lower_to_pte(module, job.example_inputs)


def default_processes() -> int:
    return max(1, min(MAX_PROCESSES, len(os.sched_getaffinity(0))))


def _claim(queue: Path) -> Path | None:
    """Take the next job file of ``queue`` (largest first); a rename is atomic, so two processes
    never take the same job."""
    for path in sorted(queue.glob("*.job")):
        taken = path.with_suffix(f".taken-{os.getpid()}")
        try:
            path.rename(taken)
        except FileNotFoundError:
            continue  # another process took it first
        return taken
    return None


def _drain(queue: Path, quantization: str) -> None:
    """Lower job after job from ``queue`` until none is left: ``<name>.pte`` or ``<name>.error``."""
    while (taken := _claim(queue)) is not None:
        job: LoweringJob = torch.load(taken, weights_only=False)  # our own file, written just now
        try:
            data = lower_job(job, quantization)
        except Exception as exc:
            (queue / f"{job.name}.error").write_text(f"{type(exc).__name__}: {exc}")
            raise RuntimeError(f"graph {job.name!r}: {type(exc).__name__}: {exc}") from exc
        partial = queue / f"{job.name}.pte.partial"
        partial.write_bytes(data)
        partial.rename(queue / f"{job.name}.pte")


def lower_graphs(
    jobs: Sequence[LoweringJob], quantization: str, processes: int | None = None
) -> dict[str, bytes]:
    """Graph name -> ``.pte`` bytes. With ``processes`` > 1 the graphs, largest first, are shared
    between this process and ``processes - 1`` workers (``python -m`` this module, so no caller's
    ``__main__`` is re-imported, as multiprocessing's spawn would)."""
    processes = min(processes or default_processes(), len(jobs))
    ordered = sorted(jobs, key=lambda j: j.size(), reverse=True)
    if processes <= 1:
        programs = {}
        for job in ordered:
            try:
                programs[job.name] = lower_job(job, quantization)
            except Exception as exc:
                raise RuntimeError(f"graph {job.name!r}: {type(exc).__name__}: {exc}") from exc
        return programs
    with tempfile.TemporaryDirectory(prefix="pte-lowering-") as tmp:
        queue = Path(tmp)
        for i, job in enumerate(ordered):
            torch.save(job, queue / f"{i:03d}.pickle")
            (queue / f"{i:03d}.pickle").rename(queue / f"{i:03d}.job")
        # the worker must import whatever the jobs' modules pickled by reference: our sys.path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        workers = []
        try:
            first = _claim(queue)  # the largest stays here: the workers start up meanwhile
            for n in range(processes - 1):
                log = (queue / f"worker-{n}.log").open("wb")
                command = [sys.executable, "-m", __name__, quantization, str(queue)]
                workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
                log.close()
            if first is not None:
                first.rename(first.with_suffix(".job"))
            _drain(queue, quantization)
            for worker in workers:
                worker.wait()
        finally:
            for worker in workers:  # nothing is left running when lowering fails or is interrupted
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        errors = sorted(queue.glob("*.error"))
        if errors:
            raise RuntimeError(f"graph {errors[0].stem!r}: {errors[0].read_text()}")
        failed = [w for w in workers if w.returncode != 0]
        if failed:
            logs = " | ".join((queue / f"worker-{n}.log").read_text()[-2000:] for n in range(len(workers)))
            raise RuntimeError(f"a lowering worker exited with {failed[0].returncode}: {logs}")
        return {job.name: (queue / f"{job.name}.pte").read_bytes() for job in ordered}


def _exit_with_parent(parent: int) -> None:
    """A worker whose export process died (killed, cut off) stops instead of lowering on for nobody."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


if __name__ == "__main__":  # a worker of lower_graphs: python -m ... QUANTIZATION QUEUE_DIR
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(1)  # lowering is Python-bound; the other processes use the other cores
    _drain(Path(sys.argv[2]), sys.argv[1])
