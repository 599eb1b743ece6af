"""Float16 storage for an ONNX graph's float32 initializers whose values are float16 numbers.

A quantized variant keeps its group scales, free zero points and other tensors (biases, norms,
position tables) as float16 (``quantization/variant_io.py``). The graphs compute in float32, so
the export writes those values as float32 initializers: the scales and float zero points of an
INT2 bundle, one of each per block of 16 weights, were half of its bytes. ``store_half`` keeps
each such initializer as float16 behind a ``Cast`` to float32; the values are the same numbers
(an initializer moves only when float16 holds every one of its values exactly), and ONNX Runtime
folds the ``Cast`` of an initializer when it loads the graph (its constant folding, on at every
optimization level but "disabled"), so a phone computes with the very float32 tensors it did.
The float32 model's trained weights are not float16 numbers: an fp32 bundle is unchanged.

``load_full`` undoes it in memory, for code that reads initializers by the name a node consumes
(the server's weight rewrites, ``serving/onnx_sessions.py``).

Example::

    saved = store_half(proto)     # bytes saved; nodes now read "<name>:float32" from a Cast
    load_full(proto)              # back to float32 initializers, as the export traced them
"""

from __future__ import annotations

from typing import Any

import numpy as np

# smaller tensors are not worth a Cast node each (a scalar constant, a shape)
MIN_ELEMENTS = 16
CAST_SUFFIX = ":float32"


def _exact_in_half(values: np.ndarray) -> bool:
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
        return False
    return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def store_half(proto: Any) -> int:
    """Store every float32 initializer of ``proto`` (at least ``MIN_ELEMENTS`` values, all exact
    in float16) as float16 under its own name, its consumers reading ``name + CAST_SUFFIX`` from
    a ``Cast`` to float32 placed first in the graph. Returns the bytes saved."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    outputs = {o.name for o in graph.output}
    casts = []
    saved = 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in outputs:
            continue
        values = numpy_helper.to_array(init)
        if values.size < MIN_ELEMENTS or not _exact_in_half(values):
            continue
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), init.name))
        casts.append(
            helper.make_node(
                "Cast", [init.name], [init.name + CAST_SUFFIX], to=TensorProto.FLOAT, name=init.name + "/cast"
            )
        )
        saved += values.size * 2
    renamed = {c.input[0]: c.output[0] for c in casts}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return saved


def load_full(proto: Any) -> int:
    """Replace each ``Cast`` to float32 of a float16 initializer by a float32 initializer named as
    the ``Cast``'s output (the float16 one goes when nothing else reads it). Returns how many."""
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    folded: set[int] = set()
    for index, node in enumerate(graph.node):
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source is None or source.data_type != TensorProto.FLOAT16 or to != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(source).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        folded.add(index)
    if folded:
        kept = [n for index, n in enumerate(graph.node) if index not in folded]
        del graph.node[:]
        graph.node.extend(kept)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        left = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(left)
    return len(folded)
