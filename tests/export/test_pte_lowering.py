"""Lowering to .pte: the graphs lowered by this process and a worker are the programs one process
lowers; the re-traces ``pte_passes`` skips change no operator, weight or delegate byte (only
debug handles); a graph that cannot be lowered fails naming that graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mobile_multimodal.export.formats import package_version

pytestmark = pytest.mark.skipif(
    package_version("executorch") is None, reason="executorch is not installed (pip install '.[export]')"
)


class _Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, width), nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class _Unlowerable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x
        return -x


def _jobs() -> list:  # type: ignore[type-arg]
    from mobile_multimodal.export.pte_lowering import LoweringJob

    torch.manual_seed(0)
    return [LoweringJob(f"mlp{w}", _Mlp(w).eval(), {}, (torch.randn(1, 16),)) for w in (32, 64, 48)]


def test_graphs_lowered_in_parallel_are_the_programs_one_process_lowers() -> None:
    from executorch.runtime import Runtime

    from mobile_multimodal.export.pte_lowering import lower_graphs

    jobs = _jobs()
    parallel = lower_graphs(jobs, "fp32", processes=2)
    serial = lower_graphs(jobs, "fp32", processes=1)
    assert set(parallel) == {"mlp32", "mlp64", "mlp48"}
    assert parallel == serial  # byte for byte
    runtime = Runtime.get()
    for job in jobs:  # and each program computes its module
        method = runtime.load_program(parallel[job.name]).load_method("forward")
        (out,) = method.execute(list(job.example_inputs))
        with torch.no_grad():
            expected = job.module(*job.example_inputs)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def _stock_lowering(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> bytes:
    """What ExecuTorch's documented flow writes: every decomposition and XNNPACK pass runs."""
    import warnings

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from mobile_multimodal.export.pte_lowering import short_provenance
    from mobile_multimodal.export.xnnpack_ops import XNNPACK_DECOMPOSITIONS

    with warnings.catch_warnings(), torch.no_grad(), short_provenance():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, example_inputs).run_decompositions(XNNPACK_DECOMPOSITIONS)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return bytes(edge.to_executorch().buffer)


@pytest.fixture
def debug_handles_set_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node's debug handle 1: programs then compare on everything but debug metadata."""
    from executorch.exir.passes.debug_handle_generator_pass import DebugHandleGeneratorPass
    from torch.fx.passes.infra.pass_base import PassResult

    def same_handle(self: object, graph_module: torch.fx.GraphModule) -> PassResult:
        for node in graph_module.graph.nodes:
            if node.op not in ("placeholder", "output"):
                node.meta["debug_handle"] = 1
        return PassResult(graph_module, True)

    monkeypatch.setattr(DebugHandleGeneratorPass, "call", same_handle)


@pytest.mark.usefixtures("debug_handles_set_aside")
def test_skipped_retraces_leave_every_operator_weight_and_delegate_byte() -> None:
    """An INT2 graph of the model (quantized Linears, attention's stack) and an MLP whose ReLU
    XNNPACK fuses into its Linear (that pass must still run): byte for byte the stock flow's
    programs once debug handles are set aside, with decompositions and passes skipped and the
    edge IR verifier off (the stock flow runs it, so it also passes on both)."""
    import copy

    from torchao.utils import unwrap_tensor_subclass

    from mobile_multimodal.export import pte_passes
    from mobile_multimodal.export.graphs import build_graphs
    from mobile_multimodal.export.pte_lowering import LoweringJob, lower_job
    from mobile_multimodal.export.xnnpack_quant import quantize_for_xnnpack
    from mobile_multimodal.model.llm import MobileMultiModalLLM

    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    spec = next(g for g in build_graphs(model) if g.name == "cross_kv")
    stock_module = copy.deepcopy(spec.module).eval()
    quantize_for_xnnpack(stock_module, spec.quantized, "int2")
    unwrap_tensor_subclass(stock_module)
    mlp = _jobs()[0]
    pte_passes.skipped.clear()
    ours = lower_job(LoweringJob("cross_kv", spec.module, spec.quantized, spec.example_inputs), "int2")
    ours_mlp = lower_job(mlp, "fp32")
    assert pte_passes.skipped["run_decompositions"] >= 2 * 2  # per graph: functionalise, default table
    assert pte_passes.skipped["ConvertToSDPAPass"] == pte_passes.skipped["FuseBatchNormPass"] == 2
    assert pte_passes.skipped.get("FuseActivationPass", 0) == 1  # the MLP's ReLU is fused
    assert ours == _stock_lowering(stock_module, spec.example_inputs)
    assert ours_mlp == _stock_lowering(mlp.module, mlp.example_inputs)


def test_a_graph_that_cannot_be_lowered_fails_naming_it() -> None:
    from mobile_multimodal.export.pte_lowering import LoweringJob, lower_graphs

    jobs = [*_jobs()[:2], LoweringJob("branchy", _Unlowerable(), {}, (torch.randn(1, 16),))]
    with pytest.raises(RuntimeError, match="branchy"):
        lower_graphs(jobs, "fp32", processes=2)


_ORPHANING_PARENT = """
import os, subprocess, sys, time
queue = sys.argv[1]
worker = subprocess.Popen(
    [sys.executable, "-m", "mobile_multimodal.export.pte_lowering", "int2", queue], stdout=subprocess.DEVNULL
)
deadline = time.monotonic() + 600
while not any(".taken-" in name for name in os.listdir(queue)):  # the worker holds the job
    assert worker.poll() is None and time.monotonic() < deadline
    time.sleep(0.1)
print(worker.pid, flush=True)
os._exit(0)
"""


def test_a_lowering_worker_stops_when_its_export_process_dies(tmp_path: Path) -> None:
    """Its job never ends (a FIFO nobody writes: loading it blocks, like a very long lowering);
    the export process that started it exits: the worker must not stay behind."""
    import os
    import subprocess
    import sys

    import psutil
    from tests.integration.servers import process_gone

    queue = tmp_path / "queue"
    queue.mkdir()
    os.mkfifo(queue / "000.job")
    done = subprocess.run(
        [sys.executable, "-c", _ORPHANING_PARENT, str(queue)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    worker = int(done.stdout.strip())
    try:
        assert process_gone(worker, timeout_s=300), "the orphaned lowering worker is still running"
    finally:
        if psutil.pid_exists(worker):
            psutil.Process(worker).kill()
