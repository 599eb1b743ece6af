"""Peer quantizers applied to our fp32 network, on exactly the layers our policy puts at low bits.

Every peer gets the same starting point: the fp32 network with the policy's INT8 layers
(embedding/output head, patch embedding, CTC output) already replaced by our INT8 modules, so
that the comparison isolates the low-bit method. Each peer then quantizes every other Linear,
each at the bits and group size the policy gives it (at INT2, ``int8-io-v2`` keeps the OCR
reader's column projection at 4 bits, groups of 96: the peers get the same):

- optimum-quanto ``qint2`` / ``qint4``: its MaxOptimizer (min-max affine), at our group size;
- hqq: half-quadratic optimisation of the zero points (and scales), 2 or 4 bits, our group size;
- ONNX Runtime ``MatMulNBits`` round-to-nearest (``MatMulNBitsQuantizer`` with the default
  weight-only config): each layer becomes a one-node ONNX graph that ORT quantizes; ORT's own
  kernel run on an identity matrix returns the weight it computes with, which the torch network
  then uses. Its block size must be a power of two, so it runs at 64 (the nearest to our 80).

``stored_bytes`` is what each peer's own format stores for those layers (codes, scales, zero
points), from the tensors it produced.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.model.quantized_layers import quantized_module, replace_module
from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight

ORT_BLOCK = 64


@dataclass
class PeerResult:
    network: MultiModalNet
    stored_bytes: int  # bytes of the peer's representation of the low-bit layers
    weights: int  # number of weights in those layers
    group_size: int
    note: str


def with_int8_layers(fp32: MultiModalNet, int8: dict[str, QuantizedWeight]) -> MultiModalNet:
    """A copy of ``fp32`` whose policy INT8 layers are our packed INT8 modules."""
    net = copy.deepcopy(fp32).eval()
    for name, qw in int8.items():
        module = net.get_submodule(name)
        replace_module(net, module, quantized_module(qw, module))
    return net


def _low_bit(plan: dict[str, LayerSpec]) -> list[str]:
    return [n for n, s in plan.items() if s.bits < 8 and s.kind == "linear"]


def _group(spec: LayerSpec, default: int) -> int:
    return spec.group_size or default


def _numel(net: nn.Module, names: list[str]) -> int:
    total = 0
    for name in names:
        module: Any = net.get_submodule(name)
        total += int(module.weight.numel())
    return total


def quanto(
    fp32: MultiModalNet,
    int8: dict[str, QuantizedWeight],
    plan: dict[str, LayerSpec],
    bits: int,
    group_size: int,
) -> PeerResult:
    from optimum.quanto import freeze, qint2, qint4, quantize

    net = with_int8_layers(fp32, int8)
    names = _low_bit(plan)
    weights = _numel(net, names)
    for width in sorted({plan[n].bits for n in names}):
        layers = [n for n in names if plan[n].bits == width]
        quantize(net, weights={2: qint2, 4: qint4}[width], include=layers)
    for name in names:
        module = net.get_submodule(name)
        # quanto picks its own group size from in_features; give it ours, for matched bits
        module.weight_group_size = _group(plan[name], group_size)  # type: ignore[assignment]
    freeze(net)
    stored = 0
    for name in names:
        qlinear: Any = net.get_submodule(name)
        w = qlinear.weight
        stored += sum(t.numel() * t.element_size() for t in (w._data._data, w._scale, w._shift))
        # quanto's weight tensors fail under torch.inference_mode (which our API uses), so the
        # network computes with the weight quanto dequantizes to: the same numbers its CPU path uses
        plain = nn.Linear(qlinear.in_features, qlinear.out_features, bias=qlinear.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(w.dequantize())
            if qlinear.bias is not None:
                plain.bias.copy_(qlinear.bias)
        replace_module(net, qlinear, plain)
    return PeerResult(
        net,
        stored,
        weights,
        group_size,
        "MaxOptimizer (min-max), float32 scale and shift; run with its dequantized weights",
    )


def hqq(
    fp32: MultiModalNet,
    int8: dict[str, QuantizedWeight],
    plan: dict[str, LayerSpec],
    bits: int,
    group_size: int,
) -> PeerResult:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    net = with_int8_layers(fp32, int8)
    names = _low_bit(plan)
    weights = _numel(net, names)
    stored = 0
    for name in names:
        module = net.get_submodule(name)
        spec = plan[name]
        cfg = BaseQuantizeConfig(nbits=spec.bits, group_size=_group(spec, group_size), axis=1)
        q = HQQLinear(module, quant_config=cfg, compute_dtype=torch.float32, device="cpu", del_orig=True)
        stored += q.W_q.numel() * q.W_q.element_size()
        stored += sum(q.meta[k].numel() * q.meta[k].element_size() for k in ("scale", "zero"))
        replace_module(net, module, q)
    return PeerResult(
        net, stored, weights, group_size, "half-quadratic zero-point optimisation, float32 meta"
    )


def _matmul_model(weight: np.ndarray) -> object:
    from onnx import TensorProto, helper, numpy_helper

    n, k = weight.shape
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])
    init = numpy_helper.from_array(np.ascontiguousarray(weight.T), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], "layer", [x], [y], [init]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def ort_rtn_weight(weight: torch.Tensor, bits: int, block: int = ORT_BLOCK) -> tuple[torch.Tensor, int]:
    """ORT MatMulNBits RTN of one (out, in) weight -> (the weight ORT computes with, stored bytes)."""
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    w = weight.detach().float().numpy()
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, bits=bits)
    quantizer = MatMulNBitsQuantizer(
        _matmul_model(w), bits=bits, block_size=block, is_symmetric=False, algo_config=cfg
    )
    quantizer.process()
    model = getattr(quantizer.model, "model", quantizer.model)
    if [n.op_type for n in model.graph.node] != ["MatMulNBits"]:
        raise RuntimeError(f"ORT did not produce a MatMulNBits node: {[n.op_type for n in model.graph.node]}")
    stored = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    eye = np.eye(w.shape[1], dtype=np.float32)
    dequantized = sess.run(None, {"X": eye})[0].T  # I @ Wq^T = Wq^T
    return torch.from_numpy(np.ascontiguousarray(dequantized)), stored


def onnxruntime_rtn(
    fp32: MultiModalNet,
    int8: dict[str, QuantizedWeight],
    plan: dict[str, LayerSpec],
    bits: int,
    group_size: int,
) -> PeerResult:
    net = with_int8_layers(fp32, int8)
    names = _low_bit(plan)
    weights = _numel(net, names)
    stored = 0
    with torch.no_grad():
        for name in names:
            module: Any = net.get_submodule(name)
            wq, nbytes = ort_rtn_weight(module.weight, plan[name].bits)
            module.weight.copy_(wq)
            stored += nbytes
    return PeerResult(
        net,
        stored,
        weights,
        ORT_BLOCK,
        f"MatMulNBits RTN, block {ORT_BLOCK} (power of two required), float32 scales",
    )


PEERS = {"quanto": quanto, "hqq": hqq, "onnxruntime": onnxruntime_rtn}
