"""Where a served decode step's time goes: one ``decoder_step`` call timed three ways.

The per-token target (ONNX Runtime >= 3x eager PyTorch) has sat near its line on some CPUs, and
the per-token figure alone cannot say why. This times the graph a server runs for every token,
on its IO-bound buffers, in three forms built from the same bundle file, alternating:

- ``served``: the graph as ``serving.onnx_sessions.BundleSessions`` loads it (quantized weights
  in MatMulNBits, 2-bit codes widened to 4-bit containers);
- ``float_weights``: every quantized weight dequantized to a float MatMul at load (quantized
  precisions only): the same values at the fp32 model's weight bytes;
- ``shared_weights``: every weight matrix replaced by one float matrix per shape, so all the
  step's weights fit in a few hundred KB of cache (``share_weights``). Its outputs mean nothing;
  its time is the step's cost when weights cost nothing to fetch and multiply as float. What
  ``served`` takes beyond it is the weights: the 4-bit kernel at a quantized precision, reading
  the weight bytes from memory at fp32.

With the per-token figure of the same run, the rest of a token (``per_token - served``) is the
decode loop around the call: Python, the KV-cache write, picking the token.

Example::

    step_breakdown(Path("var/bundles/onnx-int2-..."), "decoder_step.onnx", threads=1, repeats=30)
    # {'served_us': 318.0, 'shared_weights_us': 182.0, 'float_weights_us': 357.0, ...}
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

# the cache slot the timed step writes: mid-answer (attention reads the slots before it)
POSITION_FRACTION = 0.5
CALLS_PER_SAMPLE = 50  # one timed sample: this many calls back to back, averaged


def _initializer_names(proto: Any) -> dict[str, Any]:
    return {i.name: i for i in proto.graph.initializer}


def share_weights(proto: Any) -> int:
    """Point every weight matrix of ``proto`` at one float matrix per shape; returns how many
    nodes were changed. A ``MatMulNBits`` becomes a float ``MatMul`` (K, N); a ``MatMul`` or
    ``Gemm`` whose second input is a 2-D initializer reads the shared one of its shape instead.
    Initializers nothing reads any more are dropped. For timing only: the graph computes with
    other weights."""
    from onnx import helper, numpy_helper

    from mobile_multimodal.serving.onnx_sessions import replace_nodes

    initializers = _initializer_names(proto)
    shared: dict[tuple[int, int], str] = {}

    def matrix(shape: tuple[int, int]) -> str:
        if shape not in shared:
            name = f"shared_weight_{shape[0]}x{shape[1]}"
            values = np.random.default_rng(len(shared)).standard_normal(shape).astype(np.float32)
            proto.graph.initializer.append(numpy_helper.from_array(values * 0.05, name))
            shared[shape] = name
        return shared[shape]

    nodes, count = [], 0
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if any(node.input[4:]):  # g_idx or bias: our export writes neither
                raise ValueError(f"{node.name}: MatMulNBits with g_idx or bias is not supported")
            weight = matrix((int(attrs["K"]), int(attrs["N"])))
            matmul = helper.make_node("MatMul", [node.input[0], weight], list(node.output), name=node.name)
            nodes.append(matmul)
            count += 1
            continue
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in initializers:
            dims = tuple(int(d) for d in initializers[node.input[1]].dims)
            if len(dims) == 2:
                node.input[1] = matrix((dims[0], dims[1]))
                count += 1
        nodes.append(node)
    replace_nodes(proto, nodes)
    return count


def step_feeds(session: Any, position: int) -> dict[str, np.ndarray]:
    """A batch-1 ``decoder_step`` input: token 1 at ``position``, caches of small random values."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in spec.shape]
        if spec.name == "token":
            feeds[spec.name] = np.ones(shape, dtype=np.int64)
        elif spec.name == "position":
            feeds[spec.name] = np.full(shape, position, dtype=np.int64)
        else:
            feeds[spec.name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    return feeds


def _bound(session: Any, feeds: dict[str, np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """An IO binding of ``feeds`` and of output buffers, as the server's steps bind them."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
    outputs = []
    for spec in session.get_outputs():
        shape = [1 if not isinstance(d, int) else d for d in spec.shape]
        array = np.zeros(shape, dtype=np.float32)
        binding.bind_ortvalue_output(spec.name, ort.OrtValue.ortvalue_from_numpy(array))
        outputs.append(array)
    return binding, outputs  # the arrays must live as long as the binding


def _sessions(directory: Path, file: str, threads: int, quantized: bool) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from mobile_multimodal.serving.onnx_sessions import BundleSessions, session_options, to_served_form

    files = {"decoder_step": file}
    out = {"served": BundleSessions(directory, files, threads).sessions["decoder_step"]}
    if quantized:
        out["float_weights"] = BundleSessions(directory, files, threads, float_weights=True).sessions[
            "decoder_step"
        ]
    proto = onnx.load(str(directory / file))
    to_served_form(proto)  # first, so that every remaining float input is float32
    share_weights(proto)
    options = session_options(threads)
    out["shared_weights"] = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return out


def step_breakdown(directory: Path, file: str, threads: int, repeats: int, quantized: bool) -> dict[str, Any]:
    """Median microseconds of one ``decoder_step`` call (batch 1) in each form (module docstring),
    the forms alternating so that a drift of the machine's speed hits all alike."""
    sessions = _sessions(directory, file, threads, quantized)
    first = sessions["served"]
    slots = next(int(s.shape[2]) for s in first.get_inputs() if s.name.startswith("self_k"))
    feeds = step_feeds(first, int(slots * POSITION_FRACTION))
    bound = {name: _bound(s, feeds) for name, s in sessions.items()}
    for name, session in sessions.items():  # warm up: the first calls allocate
        for _ in range(5):
            session.run_with_iobinding(bound[name][0])
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            session, binding = sessions[name], bound[name][0]
            start = time.perf_counter()
            for _ in range(CALLS_PER_SAMPLE):
                session.run_with_iobinding(binding)
            samples[name].append((time.perf_counter() - start) * 1e6 / CALLS_PER_SAMPLE)
    return {
        "position": int(feeds["position"][0]),
        "calls_per_sample": CALLS_PER_SAMPLE,
        **{f"{name}_us": statistics.median(values) for name, values in samples.items()},
    }
