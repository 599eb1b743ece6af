"""Fewer whole-graph re-traces while lowering to XNNPACK: each skipped one finds nothing to do.

Lowering costs passes x nodes (``pte_lowering.py``): nearly every step re-traces the whole graph
with fake tensors, and most steps find nothing to do in our graphs. Two kinds are skipped:

- decompositions: ExecuTorch's ``to_edge_transform_and_lower`` decomposes three times after
  ours (functionalise; ExecuTorch's default table less the operators XNNPACK keeps; the default
  table again around the kept nodes). ``decompose()`` applies our table (``xnnpack_ops``) and
  that middle one in the export's one re-trace, after which a ``run_decompositions`` on the
  result whose table names no operator in the graph returns the program unchanged (it is
  functional already: it came out of a decomposition). A table with an operator present runs.
- XNNPACK passes whose operators are absent (``_skippable_passes``): each rewrites only nodes
  of given operators, then re-traces the graph; without such nodes that rebuilds the same graph.
  Every pattern of the SDPA pass holds ``aten.any.dim`` (the stock boolean-mask handling that
  ``xnnpack_ops`` writes out), the bilinear pass's are ``upsample_bilinear2d`` alone; skipping
  them also skips building those patterns (seconds per process).

The programs keep every operator, weight, delegate graph and memory plan byte for byte; what
moves is debug metadata: a node's debug handle groups the nodes made from one node of the last
re-trace before ExecuTorch numbers them, and with fewer re-traces that is the exported node (an
ETDump profile maps back to the model's own operators). tests/export/test_pte_lowering.py
lowers graphs both ways and compares the programs with debug handles set aside.

Example::

    with fewer_retraces():
        program = decompose(torch.export.export(module, inputs))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from torch.export import ExportedProgram

from mobile_multimodal.export.xnnpack_ops import XNNPACK_DECOMPOSITIONS

_lock = threading.Lock()
_users = 0
_originals: dict[str, Any] = {}
_FUNCTIONAL = "_mobile_mm_functional"  # set on the programs our decompositions return
skipped: dict[str, int] = {}  # what was skipped, by name: for tests and profiling


def _edge_ops(names: Collection[str]) -> set[Any]:
    from executorch.exir.dialects._ops import ops as exir_ops

    found = set()
    for name in names:
        packet, _, overload = name.rpartition(".")
        found.add(getattr(getattr(exir_ops.edge.aten, packet), overload))
    return found


def _skippable_passes() -> dict[type, set[Any]]:
    """XNNPACK pass -> the operators it rewrites (the pass is a no-op when none is present)."""
    from executorch.backends.transforms.remove_getitem_op import RemoveGetItemPass
    from executorch.backends.xnnpack._passes.conv1d_unsqueeze_pass import Conv1dUnsqueezePass
    from executorch.backends.xnnpack._passes.convert_to_sdpa import ConvertToSDPAPass
    from executorch.backends.xnnpack._passes.convert_to_upsample_bilinear2d import (
        ConvertToUpsampleBilinear2d,
    )
    from executorch.backends.xnnpack._passes.decompose_batch_norm import DecomposeBatchNorm
    from executorch.backends.xnnpack._passes.decompose_cat import DecomposeConcatenate
    from executorch.backends.xnnpack._passes.fuse_activation_pass import FuseActivationPass
    from executorch.backends.xnnpack._passes.fuse_batch_norm import FuseBatchNormPass
    from executorch.backends.xnnpack._passes.prelu_reshape_pass import PReLUReshapePass

    batch_norm = _edge_ops(["native_batch_norm.default", "_native_batch_norm_legit_no_training.default"])
    return {
        ConvertToUpsampleBilinear2d: _edge_ops(["upsample_bilinear2d.vec"]),
        ConvertToSDPAPass: _edge_ops(["any.dim"]),
        FuseBatchNormPass: batch_norm,
        DecomposeBatchNorm: batch_norm,
        FuseActivationPass: set(FuseActivationPass.FUSEABLE_ACTIVATIONS),
        DecomposeConcatenate: _edge_ops(["cat.default"]),
        Conv1dUnsqueezePass: _edge_ops(["convolution.default"]),
        PReLUReshapePass: _edge_ops(["_prelu_kernel.default"]),
        RemoveGetItemPass: _edge_ops(["max_pool2d_with_indices.default", "max.dim"]),
    }


def _targets(program: ExportedProgram) -> set[Any]:
    return {n.target for n in program.graph_module.graph.nodes if n.op == "call_function"}


def _pass_manager(base: type) -> type:
    class FilteredPassManager(base):
        """XNNPACK's pass manager, skipping each pass whose operators the graph does not hold."""

        def transform(self) -> ExportedProgram:
            from executorch.backends.xnnpack._passes import XNNPACKPass
            from executorch.backends.xnnpack._passes.propagate_custom_meta_pass import (
                PropagateCustomMetaPass,
            )
            from executorch.exir.pass_base import ExportPass
            from executorch.exir.program._program import _transform

            triggers = _skippable_passes()
            ep: ExportedProgram = self.exported_program
            for pass_ in self.passes:
                needs = triggers.get(pass_)
                if (needs is not None and not (needs & _targets(ep))) or (
                    # it copies node.meta["custom"] (set by no one here) onto q/dq nodes
                    pass_ is PropagateCustomMetaPass
                    and not any("custom" in n.meta for n in ep.graph_module.graph.nodes)
                ):
                    skipped[pass_.__name__] = skipped.get(pass_.__name__, 0) + 1
                    continue
                if issubclass(pass_, XNNPACKPass):
                    ep = _transform(ep, pass_(ep))
                elif issubclass(pass_, ExportPass):
                    ep = _transform(ep, pass_())
                else:
                    raise RuntimeError(f"unexpected XNNPACK pass {pass_}")
            return ep

    return FilteredPassManager


def _run_decompositions(original: Callable[..., ExportedProgram]) -> Callable[..., ExportedProgram]:
    from executorch.exir.graph_module import contains_any_call_fn_target_op

    def run_decompositions(
        self: ExportedProgram, decomp_table: Any = None, *args: Any, **kwargs: Any
    ) -> ExportedProgram:
        if (
            decomp_table is not None
            and getattr(self, _FUNCTIONAL, False)
            and not contains_any_call_fn_target_op(self.graph_module, decomp_table)
        ):
            skipped["run_decompositions"] = skipped.get("run_decompositions", 0) + 1
            return self
        result = original(self, decomp_table, *args, **kwargs)
        setattr(result, _FUNCTIONAL, True)  # a decomposition's output is functional
        return result

    return run_decompositions


def decompose(program: ExportedProgram) -> ExportedProgram:
    """Our decompositions (``xnnpack_ops``) and ExecuTorch's default table less the operators
    XNNPACK keeps, in one re-trace (call it inside ``fewer_retraces()``)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.program._program import _remove_invalid_ops_for_not_decompose
    from executorch.exir.tracer import _default_decomposition_table

    table = _default_decomposition_table()
    kept, _ = XnnpackPartitioner().ops_to_not_decompose(program)
    for op in _remove_invalid_ops_for_not_decompose(kept):  # what ExecuTorch itself keeps
        table.pop(op, None)
    table.update(XNNPACK_DECOMPOSITIONS)
    return program.run_decompositions(table)


@contextmanager
def fewer_retraces() -> Iterator[None]:
    """Inside, the skips of the module docstring apply. Reference-counted, so concurrent
    lowerings in one process patch and restore once."""
    global _users
    import executorch.backends.xnnpack.xnnpack_preprocess as preprocess

    with _lock:
        if _users == 0:
            _originals["manager"] = preprocess.XNNPACKPassManager
            _originals["run_decompositions"] = ExportedProgram.run_decompositions
            preprocess.XNNPACKPassManager = _pass_manager(preprocess.XNNPACKPassManager)
            ExportedProgram.run_decompositions = _run_decompositions(ExportedProgram.run_decompositions)  # type: ignore[method-assign]
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                preprocess.XNNPACKPassManager = _originals["manager"]
                ExportedProgram.run_decompositions = _originals["run_decompositions"]  # type: ignore[method-assign]
