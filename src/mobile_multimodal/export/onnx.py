"""ONNX for ONNX Runtime (Mobile): one ``.onnx`` file per graph, our own low-bit weights kept.

Each Linear whose weight came from our packed INT2/INT4/INT8 codes is written as ONNX Runtime's
``com.microsoft::MatMulNBits`` holding those very codes: our groups (80 weights, or a whole row
at INT8) are cut into blocks of the largest power of two (>= 16) that divides the group, each
block repeating its group's float16 scale (exact in float32). Integer zero points are stored
packed as uint8 (exact); free ones (the INT4 QAT variant's, or any variant quantized with
``--zero-points free``: ``quantization.schemes.zero_step``) are stored as float zero points,
one per block like the scales (ORT accepts those at 2 and 4 bits). So the exported model computes what our
PyTorch model computes: ``(code - zero) * scale`` per weight, then a float matmul.
The other packed weights (conv stem, token embedding, a group not a multiple of 16) are stored
as uint8 codes behind a per-output-channel ``DequantizeLinear`` (ONNX standard, exact with an
integer zero point). Float tensors (norms, position tables, biases) are float32 in the graphs;
a quantized variant's float16 ones, the group scales and float zero points among them, are
stored as float16 behind a ``Cast`` (``onnx_half.py``: the same values, folded at load).

Graphs are traced with torch's TorchScript-based exporter: the torch.export-based one needs
onnxscript, which is not a dependency, and the custom ops above are one ``symbolic`` each here.

Example::

    files = WRITER.write(model, build_graphs(model), "int2", Path("bundle"))
    runner = WRITER.open(Path("bundle"), bundle)
    runner.run("text_embed", {"ids": ids, "mask": mask})["embedding"]
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.errors import conversion_errors
from mobile_multimodal.export.formats import package_version
from mobile_multimodal.export.graphs import GraphSpec
from mobile_multimodal.export.onnx_half import store_half
from mobile_multimodal.export.xnnpack_ops import additive_mask
from mobile_multimodal.model.layers import Attention, KVCache
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.quantized_layers import replace_module
from mobile_multimodal.model.quantized_weight import QuantizedWeight

OPSET = 17
MS_DOMAIN = "com.microsoft"


# ---- our codes in ONNX Runtime's layouts --------------------------------------------------------
def block_size_for(group_size: int) -> int | None:
    """The MatMulNBits block that tiles ``group_size`` exactly (largest power of two >= 16 that
    divides it, at most 256), or None when there is none."""
    for block in (256, 128, 64, 32, 16):
        if group_size % block == 0:
            return block
    return None


def pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) codes, n a multiple of 8 // bits -> (..., n * bits // 8): element i of a byte's
    run at bit offset i * bits (ONNX Runtime's order, not our planar one)."""
    per_byte = 8 // bits
    c = codes.reshape(*codes.shape[:-1], -1, per_byte).astype(np.uint8)
    out = np.zeros(c.shape[:-1], dtype=np.uint8)
    for i in range(per_byte):
        out |= (c[..., i] << (bits * i)).astype(np.uint8)
    return out


def matmul_nbits_tensors(qw: QuantizedWeight, block: int) -> dict[str, np.ndarray]:
    """B (N, k_blocks, blob), scales (N * k_blocks,) float32 and zero points of our weight."""
    n_out, k = qw.shape[0], qw.in_features
    k_blocks = -(-k // block)
    codes = np.zeros((n_out, k_blocks * block), dtype=np.uint8)
    codes[:, :k] = qw.codes().numpy()
    group_of_block = (np.arange(k_blocks) * block) // qw.group_size
    scales = qw.scales.float().numpy()[:, group_of_block]  # float16 values, exact in float32
    zeros = qw.zeros.float().numpy()[:, group_of_block]
    packed = pack_low_first(codes.reshape(n_out, k_blocks, block), qw.bits)
    if np.array_equal(zeros, np.round(zeros)):
        per_byte = 8 // qw.bits
        padded = np.zeros((n_out, -(-k_blocks // per_byte) * per_byte), dtype=np.uint8)
        padded[:, :k_blocks] = zeros.astype(np.uint8)
        zero_points = pack_low_first(padded, qw.bits).reshape(-1)
    else:
        zero_points = zeros.reshape(-1).astype(np.float32)
    return {"B": packed, "scales": scales.reshape(-1).astype(np.float32), "zero_points": zero_points}


def matmul_nbits_exact(qw: QuantizedWeight) -> bool:
    """Whether the weight maps onto MatMulNBits: a block that tiles its groups, and zero points
    ORT accepts for its width (uint8 always; float ones only at 2 and 4 bits)."""
    if block_size_for(qw.group_size) is None:
        return False
    zeros = qw.zeros.float()
    return qw.bits != 8 or bool(torch.equal(zeros, zeros.round()))


# ---- export-time modules: eager = PyTorch's float op, symbolic = the ORT op -------------------------
class _MatMulNBits(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        b: Tensor,
        scales: Tensor,
        zeros: Tensor,
        weight: Tensor,
        k: int,
        n: int,
        bits: int,
        block: int,
    ) -> Tensor:
        return F.linear(x, weight)

    @staticmethod
    def symbolic(
        g: Any, x: Any, b: Any, scales: Any, zeros: Any, weight: Any, k: int, n: int, bits: int, block: int
    ) -> Any:
        y = g.op(
            f"{MS_DOMAIN}::MatMulNBits", x, b, scales, zeros, K_i=k, N_i=n, bits_i=bits, block_size_i=block
        )
        sizes = x.type().varyingSizes()  # None where a dimension is dynamic (the genai decoder)
        if sizes is not None:
            y.setType(x.type().with_sizes([*sizes[:-1], n]))
        return y


class _Dequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, codes: Tensor, scale: Tensor, zero: Tensor, weight: Tensor) -> Tensor:
        return weight.clone()

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero: Any, weight: Any) -> Any:
        y = g.op("DequantizeLinear", codes, scale, zero, axis_i=0)
        y.setType(weight.type())
        return y


class NBitsLinear(nn.Module):
    """A float Linear that exports as MatMulNBits (+ Add for the bias)."""

    def __init__(self, linear: nn.Linear, qw: QuantizedWeight) -> None:
        super().__init__()
        self.block = block_size_for(qw.group_size) or 0
        self.bits, self.k, self.n = qw.bits, qw.in_features, qw.shape[0]
        tensors = matmul_nbits_tensors(qw, self.block)
        self.register_buffer("b", torch.from_numpy(tensors["B"]))
        self.register_buffer("scales", torch.from_numpy(tensors["scales"]))
        self.register_buffer("zero_points", torch.from_numpy(tensors["zero_points"]))
        self.register_buffer("weight", linear.weight.detach().clone())
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        y = _MatMulNBits.apply(
            x, self.b, self.scales, self.zero_points, self.weight, self.k, self.n, self.bits, self.block
        )
        return y if self.bias is None else y + self.bias


class _DequantizedWeight(nn.Module):
    """uint8 codes + per-output-channel scale/zero point, exported as DequantizeLinear(axis 0)."""

    def __init__(self, weight: Tensor, qw: QuantizedWeight) -> None:
        super().__init__()
        self.register_buffer("codes", qw.codes().reshape(qw.shape).contiguous())
        self.register_buffer("scale", qw.scales[:, 0].float().contiguous())
        self.register_buffer("zero", qw.zeros[:, 0].float().round().to(torch.uint8).contiguous())
        self.register_buffer("float_weight", weight.detach().clone())

    def forward(self) -> Tensor:
        return _Dequantize.apply(self.codes, self.scale, self.zero, self.float_weight)


class DequantizedConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, qw: QuantizedWeight) -> None:
        super().__init__()
        self.w = _DequantizedWeight(conv.weight, qw)
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.w(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class DequantizedEmbedding(nn.Module):
    """The token embedding; ``weight`` is also the tied output head's matrix."""

    def __init__(self, embedding: nn.Embedding, qw: QuantizedWeight) -> None:
        super().__init__()
        self.w = _DequantizedWeight(embedding.weight, qw)

    @property
    def weight(self) -> Tensor:
        return self.w()

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


def _per_channel(qw: QuantizedWeight) -> bool:
    """One group per output channel with an integer zero point: DequantizeLinear is exact."""
    zeros = qw.zeros.float()
    return qw.scales.shape[1] == 1 and bool(torch.equal(zeros, zeros.round()))


class AdditiveMaskAttention(Attention):
    """``Attention`` handing its boolean mask to the attention as an additive bias (0 where a key
    may be seen, ``xnnpack_ops.MASKED_SCORE`` where not). ONNX writes a boolean mask as Where -> Softmax ->
    IsNaN -> Where, a quarter of the ``vision`` graph's time at a batch of 16 (ONNX Runtime's
    profiler); an additive one is one Add. The same values wherever a query sees at least one
    key (exp of a score 1e9 below the others is 0 in float32), as every query of the vision
    encoder sees the image tokens (measured equal: 0.0 apart)."""

    def forward(
        self,
        x: Tensor,
        source: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        append_to_cache: bool = False,
    ) -> tuple[Tensor, KVCache]:
        bias = None if mask is None else additive_mask(mask, x.dtype)
        return super().forward(x, source, bias, cache, append_to_cache)


# graphs whose attention masks always leave each query a key to see (see AdditiveMaskAttention)
ADDITIVE_MASK_GRAPHS = ("vision",)


def onnx_module(spec: GraphSpec) -> tuple[nn.Module, dict[str, int]]:
    """A copy of the spec's module whose quantized layers export as ORT ops, and how many layers
    went which way ({"matmul_nbits": .., "dequantize_linear": .., "float": ..})."""
    module = copy.deepcopy(spec.module)
    counts = {"matmul_nbits": 0, "dequantize_linear": 0, "float": 0}
    for name, qw in spec.quantized.items():
        layer = module.get_submodule(name)
        new: nn.Module | None = None
        if isinstance(layer, nn.Linear) and matmul_nbits_exact(qw):
            new, kind = NBitsLinear(layer, qw), "matmul_nbits"
        elif isinstance(layer, nn.Conv2d) and _per_channel(qw):
            new, kind = DequantizedConv2d(layer, qw), "dequantize_linear"
        elif isinstance(layer, nn.Embedding) and _per_channel(qw):
            new, kind = DequantizedEmbedding(layer, qw), "dequantize_linear"
        else:
            kind = "float"  # stays the dequantized float weight: exact, only larger
        if new is not None:
            replace_module(module, layer, new)
        counts[kind] += 1
    if spec.name in ADDITIVE_MASK_GRAPHS:
        for attention in module.modules():
            if type(attention) is Attention:  # the copy's own layers, weights and all, kept
                attention.__class__ = AdditiveMaskAttention
    return module.eval(), counts


def export_onnx(
    spec: GraphSpec, path: Path, quantization: str, dynamic_axes: dict[str, dict[int, str]] | None = None
) -> None:
    """Trace ``spec`` into the ONNX file ``path`` (packed layers as MatMulNBits/DequantizeLinear)."""
    import onnx

    module, counts = onnx_module(spec)
    buffer = io.BytesIO()
    with conversion_errors(f"ONNX export of graph {spec.name!r}"):
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated upstream (see the module docstring)
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                spec.example_inputs,
                buffer,  # type: ignore[arg-type]  # the TorchScript path writes to a file object
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
                dynamic_axes=dynamic_axes,
                custom_opsets={MS_DOMAIN: 1} if counts["matmul_nbits"] else None,
            )
        proto = onnx.load_from_string(buffer.getvalue())
        if dynamic_axes:
            _pin_static_dims(proto, module, spec, dynamic_axes)
        if quantization != "fp32":  # the variant's float16 tensors stored as float16 (onnx_half.py)
            store_half(proto)
        proto.doc_string = f"mobile-multimodal-llm {spec.name} ({quantization}): {counts}"
        onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


# the symbolic dimensions' names in the files, which bundle_extras reads back: the batch, and
# each kind of length (GraphSpec.length_name) -> the bundle.json key that names its axes
BATCH_DIM = "batch"
LENGTH_AXES_KEYS = {"question": "question_axes", "prompt": "prompt_axes"}


def dynamic_axes(spec: GraphSpec) -> dict[str, dict[int, str]] | None:
    """The dynamic axes of a graph's inputs and outputs: the batch (``GraphSpec.batch_axes``) and
    the question's or prompt's length (``GraphSpec.length_axes``); None (all static) for a graph
    with neither."""
    axes: dict[str, dict[int, str]] = {}
    for named, dim in ((spec.batch_axes, BATCH_DIM), (spec.length_axes, spec.length_name)):
        for name, axis in named.items():
            axes.setdefault(name, {})[axis] = dim
    return axes or None


def _pin_static_dims(
    proto: Any, module: nn.Module, spec: GraphSpec, dynamic_axes: dict[str, dict[int, str]]
) -> None:
    """Give every output dimension that is not dynamic its traced size. With a dynamic batch the
    exporter's shape inference can lose a static size on the way (vision's token count came out
    as a symbol), and bundle.json and apps read the sizes from the file's outputs."""
    with torch.no_grad():
        outputs = module(*spec.example_inputs)
    traced = dict(zip(spec.output_names, outputs if isinstance(outputs, tuple) else (outputs,), strict=True))
    for value in proto.graph.output:
        if value.name not in traced:
            continue
        dynamic = dynamic_axes.get(value.name, {})
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i not in dynamic:
                dim.Clear()
                dim.dim_value = int(traced[value.name].shape[i])


# ---- the writer ---------------------------------------------------------------------------------
class OnnxGraphRunner:
    """One ONNX Runtime session per graph, on the CPU execution provider."""

    def __init__(self, out: Path, files: dict[str, str], threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings from ORT's optimizer are not the user's business
        self.sessions = {
            name: ort.InferenceSession(str(out / file), options, providers=["CPUExecutionProvider"])
            for name, file in files.items()
        }

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))


class OnnxWriter:
    name = "onnx"
    runtime = "onnxruntime"
    prefill = True  # a prompt of any length: the bundle carries 'prefill'
    extension = ".onnx"
    install_hint = "pip install onnx onnxruntime"

    def toolchain(self) -> dict[str, str | None]:
        return {"onnx": package_version("onnx"), "onnxruntime": package_version("onnxruntime")}

    def optional_toolchain(self) -> dict[str, str | None]:
        """Runtimes the bundle also serves, checked by validation when installed."""
        return {"onnxruntime-genai": package_version("onnxruntime-genai")}

    def write(
        self, model: MobileMultiModalLLM, graphs: list[GraphSpec], quantization: str, out: Path
    ) -> list[Path]:
        from mobile_multimodal.export.genai import write_genai

        files = []
        for spec in graphs:
            path = out / f"{spec.name}{self.extension}"
            export_onnx(spec, path, quantization, dynamic_axes=dynamic_axes(spec))
            files.append(path)
        # the same decoder for onnxruntime-genai's generation loop (see genai.py)
        return files + write_genai(model, graphs, quantization, out)

    def bundle_extras(self, out: Path, bundle: dict[str, Any]) -> dict[str, Any]:
        """What bundle.json says beyond the graphs: which axes of a graph's inputs and outputs take
        any batch size (``batch_axes``; the shapes given are batch 1, what a phone feeds), any
        question length up to question.max_len (``question_axes``; the shapes given are the
        longest) or any prompt length (``prompt_axes``, 'prefill'), and how onnxruntime-genai
        loads this bundle."""
        import onnx

        from mobile_multimodal.export.genai import describe_genai

        graphs = {}
        for name, graph in bundle["graphs"].items():
            proto = onnx.load(str(out / graph["file"]), load_external_data=False)
            described = dict(graph)
            for dim, key in (*LENGTH_AXES_KEYS.items(), (BATCH_DIM, "batch_axes")):
                axes = {
                    v.name: i
                    for v in (*proto.graph.input, *proto.graph.output)
                    for i, d in enumerate(v.type.tensor_type.shape.dim)
                    if d.dim_param == dim
                }
                if axes:
                    described[key] = axes
            graphs[name] = described
        return {"graphs": graphs, **describe_genai(out)}

    def open(self, out: Path, bundle: dict[str, Any]) -> OnnxGraphRunner | str:
        return OnnxGraphRunner(out, {name: g["file"] for name, g in bundle["graphs"].items()})

    def inspect(self, out: Path, bundle: dict[str, Any]) -> dict[str, Any]:
        """Operator counts and weight bytes by storage kind, over every graph file."""
        import onnx

        ops: dict[str, int] = {}
        weights: dict[str, int] = {}
        for g in bundle["graphs"].values():
            proto = onnx.load(str(out / g["file"]))
            for node in proto.graph.node:
                key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
                ops[key] = ops.get(key, 0) + 1
            for init in proto.graph.initializer:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
                weights[dtype] = weights.get(dtype, 0) + len(init.raw_data or b"")
        return {"operators": dict(sorted(ops.items())), "initializer_bytes_by_dtype": weights}


WRITER = OnnxWriter()
