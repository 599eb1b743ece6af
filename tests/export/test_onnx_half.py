"""Float16 storage of float16-exact initializers (export/onnx_half.py), on a real ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mobile_multimodal.export.onnx_half import CAST_SUFFIX, MIN_ELEMENTS, load_full, store_half


def _graph(weight: np.ndarray, bias: np.ndarray, small: np.ndarray) -> object:
    """y = (x @ weight + bias) * small: one initializer of each kind store_half must tell apart."""
    nodes = [
        helper.make_node("MatMul", ["x", "weight"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["xwb"]),
        helper.make_node("Mul", ["xwb", "small"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, weight.shape[1]])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(small, "small"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: object, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return np.asarray(session.run(["y"], {"x": x})[0])


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    width = MIN_ELEMENTS - 1
    weight = rng.standard_normal((32, width)).astype(np.float16).astype(np.float32)  # float16 numbers
    bias = rng.standard_normal(width).astype(np.float32)  # float32 numbers: not exact in float16
    small = np.full(width, 0.5, dtype=np.float32)  # exact, but too few values to be worth a Cast
    x = rng.standard_normal((2, 32)).astype(np.float32)
    return weight, bias, small, x


def test_exact_initializers_go_to_float16_and_compute_the_same() -> None:
    weight, bias, small, x = _inputs()
    proto = _graph(weight, bias, small)
    before = _run(proto, x)
    size_before = proto.ByteSize()  # type: ignore[attr-defined]
    saved = store_half(proto)
    stored = {i.name: i for i in proto.graph.initializer}  # type: ignore[attr-defined]
    assert stored["weight"].data_type == TensorProto.FLOAT16 and saved == weight.size * 2
    assert stored["bias"].data_type == TensorProto.FLOAT  # float32 values float16 cannot hold
    assert stored["small"].data_type == TensorProto.FLOAT  # fewer than MIN_ELEMENTS values
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]  # type: ignore[attr-defined]
    assert [c.output[0] for c in casts] == ["weight" + CAST_SUFFIX]
    assert proto.graph.node[1].input[1] == "weight" + CAST_SUFFIX  # type: ignore[attr-defined]
    assert proto.ByteSize() < size_before - weight.size  # type: ignore[attr-defined]
    np.testing.assert_array_equal(_run(proto, x), before)  # the same numbers, bit for bit


def test_load_full_restores_float32_initializers() -> None:
    weight, bias, small, x = _inputs()
    proto = _graph(weight, bias, small)
    before = _run(proto, x)
    store_half(proto)
    assert load_full(proto) == 1
    assert not [n for n in proto.graph.node if n.op_type == "Cast"]  # type: ignore[attr-defined]
    stored = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}  # type: ignore[attr-defined]
    assert set(stored) == {"weight" + CAST_SUFFIX, "bias", "small"}  # the float16 copy is gone
    np.testing.assert_array_equal(stored["weight" + CAST_SUFFIX], weight)
    assert stored["weight" + CAST_SUFFIX].dtype == np.float32
    np.testing.assert_array_equal(_run(proto, x), before)
    assert load_full(proto) == 0  # nothing left to fold: a second call changes nothing


def test_non_finite_and_out_of_range_initializers_stay_float32() -> None:
    weight, bias, small, _ = _inputs()
    masked = weight.copy()
    masked[0, 0] = -np.inf  # a mask constant: never moved, whatever float16 would make of it
    huge = weight.copy()
    huge[0, 0] = 1e9  # beyond float16's range
    for values in (masked, huge):
        assert store_half(_graph(values, bias, small)) == 0
