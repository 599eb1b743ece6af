"""ONNX Runtime sessions for serving a bundle, with 2-bit weights in 4-bit containers.

ONNX Runtime (1.32, x64) has no fast ``MatMulNBits`` kernel for 2-bit weights at float accuracy
(``accuracy_level`` 0, what our bundles ask for so that they compute what PyTorch computes): one
(1, 160) x (160, 400) product takes milliseconds where the 4-bit kernel takes tenths of one, and
an INT2 decode step ran 7x slower than the same step with 4-bit containers (measured:
benchmarks/runtime). So the server widens each 2-bit ``MatMulNBits`` at load, in memory: the
same codes, block size, scales and zero points, re-packed two per byte instead of four, with
``bits=4``. Every weight dequantizes to the same float, so the outputs are those of the bundle
as shipped (tested equal, to float rounding, to the shipped graph and to PyTorch); the files on
disk, which the integrity checks hash and phones run, are untouched. ``widen_2bit=False`` runs
the shipped bytes as they are (the benchmark measures both).

A variant with fractional zero points (``quantize --zero-points free``; QAT's learned ones: the
bundled INT4) ships them as floats, and the 4-bit kernel is slow with float zero points too
(INT2 decode 4.0 ms a token against 0.55 with the rewrite below, measured: benchmarks/runtime).
So each such node gets whole zero points, z = round(zero), plus the exact difference
(z - zero) * scale applied to the input's per-block sums by two small MatMuls
(``whole_zero_points``): three more nodes per MatMulNBits, about 0.1 ms a token at INT2. Zero
points on a quarter-code grid (``--zero-points quarter``) need none of that: with the codes
and zero points times 4 and the scale over 4, the 4-bit node holds them whole and exact.
Each rewrite first turns the bundle's float16-stored scales and zero points back into the
float32 initializers it reads (``export/onnx_half.load_full``); the shipped form keeps the
``Cast``s, which ONNX Runtime folds at load as a phone's does.

Decoding binds ``decoder_step``'s inputs and outputs to buffers held for the whole answer
(``decoder_steps``, ONNX Runtime's IO binding): the fixed-size KV cache lives in one buffer per
layer, bound as inputs, into which each step's new keys/values are written in place; the token
and position are written in place and the logits land in one buffer, so a step allocates nothing
and no cache array is handed to ``run``. The values are the plain path's (``step_caches.ArraySteps``:
the same graph on the same inputs), tested token for token.

Example::

    runner = BundleSessions(Path("bundle"), {"decoder_step": "decoder_step.onnx"}, threads=1)
    runner.run("decoder_step", inputs)["logits"]
    runner.widened          # {'decoder_step': 28}: 2-bit MatMulNBits served from 4-bit containers
    steps = runner.decoder_steps(cross_k, cross_v, [4, 1, 5, 48, 32])
    steps.step(token=1, position=0)         # logits (1, V), valid until the next step
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobile_multimodal.export.onnx import pack_low_first
from mobile_multimodal.export.onnx_half import load_full
from mobile_multimodal.export.step_caches import LayerCaches, PromptCache

WIDE_BITS = 4


def unpack_low_first(packed: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) bytes -> (..., n * 8 // bits) codes, element i of a byte at bit offset i * bits
    (ONNX Runtime's order; the inverse of ``export.onnx.pack_low_first``)."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    out = np.stack([(packed >> (bits * i)) & mask for i in range(per_byte)], axis=-1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * per_byte).astype(np.uint8)


def _matmul_nbits(proto: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Every ``MatMulNBits`` node of ``proto`` with its attributes (name -> value), listed up
    front so that a rewrite may insert nodes as it goes."""
    from onnx import helper

    return [
        (node, {a.name: helper.get_attribute_value(a) for a in node.attribute})
        for node in proto.graph.node
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft"
    ]


def widen_2bit_matmuls(proto: Any) -> int:
    """Rewrite every 2-bit MatMulNBits of ``proto`` (an onnx.ModelProto) as a 4-bit one holding
    the same codes; returns how many. Float zero points on the quarter-code grid (``quantize
    --zero-points quarter``) become whole ones of a 4-bit grid four times as fine (``_quarter_zero_points``);
    other float zero points stay floats (``whole_zero_points`` makes them whole)."""
    from onnx import numpy_helper

    load_full(proto)  # scales and zero points stored as float16 (export/onnx_half.py)
    initializers = {i.name: i for i in proto.graph.initializer}
    count = 0
    for node, attrs in _matmul_nbits(proto):
        if attrs["bits"] != 2:
            continue
        n_out = int(attrs["N"])
        b = initializers[node.input[1]]
        codes = unpack_low_first(numpy_helper.to_array(b), 2)  # (N, k_blocks, block)
        k_blocks = codes.shape[1]
        zp = initializers.get(node.input[3]) if len(node.input) > 3 else None
        if zp is not None:
            zeros = numpy_helper.to_array(zp)
            if zeros.dtype == np.uint8:  # packed like the codes, each row padded to whole bytes
                rows = unpack_low_first(zeros.reshape(n_out, -1), 2)[:, :k_blocks]
                zp.CopyFrom(numpy_helper.from_array(_packed_zero_points(rows), zp.name))
            elif _on_quarter_grid(zeros):
                codes = codes * QUARTER_FACTOR
                _quarter_zero_points(zp, initializers[node.input[2]], zeros.reshape(n_out, k_blocks))
        b.CopyFrom(numpy_helper.from_array(pack_low_first(codes, WIDE_BITS), b.name))
        next(a for a in node.attribute if a.name == "bits").i = WIDE_BITS
        count += 1
    return count


# 2-bit codes and quarter-grid zero points times this are whole 4-bit values: codes 0..12, zero
# points 0..12 (a 2-bit zero point lies in [0, 3])
QUARTER_FACTOR = 4


def _on_quarter_grid(zeros: np.ndarray) -> bool:
    """Whether float zero points are all multiples of 1/4 in [0, 3]: exactly a 4-bit grid's
    whole zero points divided by ``QUARTER_FACTOR``."""
    scaled = zeros.astype(np.float64) * QUARTER_FACTOR
    return bool(
        np.all(scaled == np.round(scaled)) and scaled.min() >= 0 and scaled.max() <= 3 * QUARTER_FACTOR
    )


def _quarter_zero_points(zp: Any, scales: Any, zeros: np.ndarray) -> None:
    """Zero points z = k/4 and scale s as whole 4-bit zero points 4z and scale s/4, the codes
    times 4 (the caller): (4q - 4z) * s/4 = (q - z) * s, each factor exact in binary floating
    point, so every weight dequantizes to the same float as the shipped 2-bit node's."""
    from onnx import numpy_helper

    whole = np.round(zeros.astype(np.float64) * QUARTER_FACTOR).astype(np.uint8)
    zp.CopyFrom(numpy_helper.from_array(_packed_zero_points(whole), zp.name))
    quarter = numpy_helper.to_array(scales) / np.float32(QUARTER_FACTOR)
    scales.CopyFrom(numpy_helper.from_array(quarter.astype(np.float32), scales.name))


def _packed_zero_points(rows: np.ndarray) -> np.ndarray:
    """(N, k_blocks) whole zero points -> MatMulNBits' 4-bit layout (each row padded to whole bytes)."""
    per_byte = 8 // WIDE_BITS
    padded = np.zeros((rows.shape[0], -(-rows.shape[1] // per_byte) * per_byte), dtype=np.uint8)
    padded[:, : rows.shape[1]] = rows
    return pack_low_first(padded, WIDE_BITS).reshape(-1)


def whole_zero_points(proto: Any) -> int:
    """Give every 4-bit MatMulNBits of ``proto`` that has float zero points whole ones plus the
    exact correction (``_make_whole``); returns how many. Run after ``widen_2bit_matmuls``."""
    from onnx import numpy_helper

    load_full(proto)  # scales and zero points stored as float16 (export/onnx_half.py)
    initializers = {i.name: i for i in proto.graph.initializer}
    count = 0
    for node, attrs in _matmul_nbits(proto):
        zp = initializers.get(node.input[3]) if len(node.input) > 3 else None
        if attrs["bits"] != WIDE_BITS or zp is None:
            continue
        zeros = numpy_helper.to_array(zp)
        if zeros.dtype != np.uint8:
            _make_whole(proto, node, attrs, initializers, zeros.reshape(int(attrs["N"]), -1))
            count += 1
    return count


def _make_whole(
    proto: Any, node: Any, attrs: dict[str, Any], initializers: dict[str, Any], zeros: np.ndarray
) -> None:
    """Give ``node`` (a MatMulNBits with float zero points ``zeros``, (N, k_blocks)) whole ones,
    z = round(zero), and add back what that moved: (q - zero) * s = (q - z) * s + (z - zero) * s,
    so y = MatMulNBits(x; z) + (x's per-block sums) @ D with D[b, n] = (z - zero)[n, b] * s[n, b].
    Two small MatMuls (x @ a (K, k_blocks) 0/1 block indicator, then @ D) and an Add, for a
    kernel ONNX Runtime runs an order of magnitude faster than the float-zero-point one."""
    from onnx import helper, numpy_helper

    k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
    k_blocks = zeros.shape[1]
    scales = numpy_helper.to_array(initializers[node.input[2]]).reshape(n, k_blocks).astype(np.float32)
    whole = np.clip(np.round(zeros.astype(np.float32)), 0, (1 << WIDE_BITS) - 1)
    zp = initializers[node.input[3]]
    zp.CopyFrom(numpy_helper.from_array(_packed_zero_points(whole.astype(np.uint8)), zp.name))
    indicator = np.zeros((k, k_blocks), dtype=np.float32)
    indicator[np.arange(k), np.arange(k) // block] = 1.0
    shift = ((whole - zeros.astype(np.float32)) * scales).T  # (k_blocks, N)
    base = f"{node.name or node.output[0]}.zero_shift"
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(indicator, f"{base}.blocks"),
            numpy_helper.from_array(np.ascontiguousarray(shift, dtype=np.float32), f"{base}.d"),
        ]
    )
    out = node.output[0]
    node.output[0] = f"{base}.y"
    extra = [
        helper.make_node("MatMul", [node.input[0], f"{base}.blocks"], [f"{base}.sums"], name=f"{base}.sum"),
        helper.make_node("MatMul", [f"{base}.sums", f"{base}.d"], [f"{base}.c"], name=f"{base}.shift"),
        helper.make_node("Add", [f"{base}.y", f"{base}.c"], [out], name=f"{base}.add"),
    ]
    position = list(proto.graph.node).index(node) + 1
    for offset, new_node in enumerate(extra):
        proto.graph.node.insert(position + offset, new_node)


def replace_nodes(proto: Any, nodes: list[Any]) -> None:
    """Make ``nodes`` the graph of ``proto`` and drop the initializers none of them reads."""
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {i for node in proto.graph.node for i in node.input}
    kept = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def dequantize_matmuls(proto: Any) -> int:
    """Rewrite every ``MatMulNBits`` of ``proto`` as a float ``MatMul`` on its dequantized weight,
    ``(code - zero point) * scale`` per block, the weight PyTorch's packed layers compute with;
    returns how many. The packed initializers are dropped: the session holds float weights (the
    memory of the fp32 model). Not the served default (see ``BundleSessions``)."""
    from onnx import helper, numpy_helper

    load_full(proto)  # scales and zero points stored as float16 (export/onnx_half.py)
    initializers = {i.name: i for i in proto.graph.initializer}
    nodes, count = [], 0
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if any(node.input[4:]):  # g_idx or bias: our export writes neither
            raise ValueError(f"{node.name}: MatMulNBits with g_idx or bias is not supported")
        k, n, bits = int(attrs["K"]), int(attrs["N"]), int(attrs["bits"])
        codes = unpack_low_first(numpy_helper.to_array(initializers[node.input[1]]), bits)
        blocks = codes.shape[1]
        scales = numpy_helper.to_array(initializers[node.input[2]]).reshape(n, blocks)
        zeros: np.ndarray = np.full((n, blocks), 1 << (bits - 1), dtype=np.float32)
        if len(node.input) > 3 and node.input[3]:
            zeros = numpy_helper.to_array(initializers[node.input[3]])
            if zeros.dtype == np.uint8:  # packed like the codes, each row padded to whole bytes
                zeros = unpack_low_first(zeros.reshape(n, -1), bits)[:, :blocks]
            zeros = zeros.reshape(n, blocks)
        weight = (codes.astype(np.float32) - zeros.astype(np.float32)[..., None]) * scales.astype(np.float32)[
            ..., None
        ]
        name = f"{node.input[1]}.dequantized_t"
        proto.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(weight.reshape(n, -1)[:, :k].T), name)
        )
        nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
        count += 1
    replace_nodes(proto, nodes)
    return count


def to_served_form(proto: Any) -> tuple[int, int]:
    """The graph as the server runs it (module docstring): 2-bit MatMulNBits widened to 4-bit
    containers, then float zero points made whole; (how many widened, how many made whole)."""
    widened = widen_2bit_matmuls(proto)
    return widened, whole_zero_points(proto)


def session_options(threads: int) -> Any:
    """The ``onnxruntime.SessionOptions`` every served graph is loaded with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # pool threads sleep when a graph ends instead of spinning for the next one: beside the
    # event loop on few cores a spinning thread takes the core HTTP work needs
    # (serving.model_loading.onnx_threads_for)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # ORT's optimizer warnings are not the operator's business
    # constant-fold DequantizeLinear of initializers at load (ORT keeps QDQ pairs unfolded by
    # default, for quantized execution providers the CPU one is not): the INT2 token
    # embedding, which the tied output head reads too, was dequantized twice every step
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class BundleSessions:
    """One ONNX Runtime session per graph (CPU), as a ``GraphRunner`` for ``decode.BundleModel``.

    ``float_weights=True`` dequantizes every ``MatMulNBits`` to a float ``MatMul`` at load
    (``dequantize_matmuls``): the same weights PyTorch's packed layers compute with, as fast as
    the fp32 bundle (INT2 decode ~25% faster per token than in 4-bit containers, measured:
    benchmarks/runtime), at the fp32 model's resident memory instead of the quantized one's.
    Off by default: serving a quantized model keeps its weights quantized in memory."""

    def __init__(
        self,
        directory: Path,
        files: dict[str, str],
        threads: int = 1,
        widen_2bit: bool = True,
        float_weights: bool = False,
    ) -> None:
        import onnx
        import onnxruntime as ort

        options = session_options(threads)
        self.sessions: dict[str, Any] = {}
        self.output_names: dict[str, list[str]] = {}
        self.widened: dict[str, int] = {}
        self.dequantized: dict[str, int] = {}  # float_weights: MatMulNBits run as float MatMul
        self.made_whole: dict[str, int] = {}  # MatMulNBits whose float zero points were made whole
        # Bytes of each graph as handed to its session (2-bit weights widened: more than the file)
        # and the largest KV cache one answer's decode has held (model_memory_usage_bytes).
        self.graph_bytes: dict[str, int] = {}
        self.peak_cache_bytes = 0
        for name, file in files.items():
            proto = onnx.load(str(directory / file))
            served_form = widen_2bit and not float_weights  # else the shipped bytes, or float MatMuls
            self.widened[name], self.made_whole[name] = to_served_form(proto) if served_form else (0, 0)
            self.dequantized[name] = dequantize_matmuls(proto) if float_weights else 0
            serialized = proto.SerializeToString()
            self.graph_bytes[name] = len(serialized)
            session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
            self.sessions[name] = session
            self.output_names[name] = [o.name for o in session.get_outputs()]

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names[graph]
        return dict(zip(names, self.sessions[graph].run(names, inputs), strict=True))

    def batches(self, graph: str) -> bool:
        """Whether ``graph`` takes any batch size (its first input's first axis is symbolic, as
        the ONNX export writes ``decoder_step``); bundles exported before that take batch 1."""
        first = self.sessions[graph].get_inputs()[0]
        return bool(first.shape) and not isinstance(first.shape[0], int)

    def batch_steps(
        self,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        cache_shape: Sequence[int],
        prompt: PromptCache | None = None,
    ) -> BoundBatchSteps:
        """``decoder_step`` for a batch of answers (``cross_k.shape[1]`` rows) on bound buffers;
        ``export.batch_decode.greedy_batch`` uses it instead of passing the caches through ``run``."""
        return BoundBatchSteps(
            self.sessions["decoder_step"], cross_k, cross_v, cache_shape, self._saw_cache, prompt
        )

    def _saw_cache(self, size: int) -> None:
        self.peak_cache_bytes = max(self.peak_cache_bytes, size)

    def decoder_steps(
        self,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        cache_shape: Sequence[int],
        prompt: PromptCache | None = None,
    ) -> BoundDecoderSteps:
        """``decoder_step`` for one answer, its KV cache kept in bound buffers (see the module
        docstring); ``decode.BundleModel`` uses it instead of passing the cache through ``run``."""
        return BoundDecoderSteps(
            self.sessions["decoder_step"], cross_k, cross_v, cache_shape, self._saw_cache, prompt
        )


class BoundBatchSteps:
    """A batch's ``decoder_step`` calls on IO-bound buffers (an ``export.batch_decode.BatchSteps``).

    The per-layer caches and cross keys/values (``step_caches.LayerCaches``, the plain contract's own
    buffers) are bound as inputs once; each step's new_k/new_v land in bound output buffers and
    are written into slot ``position`` of the caches in place, the bound inputs seeing it. Tokens
    and positions are written in place too: a step allocates nothing and no cache array crosses
    a ``run`` call. When rows leave (``keep``), the kept rows' caches are copied into smaller
    buffers and the binding rebuilt: at most once per finishing step."""

    def __init__(
        self,
        session: Any,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        cache_shape: Sequence[int],
        on_size: Callable[[int], None] | None = None,
        prompt: PromptCache | None = None,
    ) -> None:
        self._session = session
        self._vocab = int(next(o.shape for o in session.get_outputs() if o.name == "logits")[-1])
        self._on_size = on_size  # hears the cache's bytes whenever they grow (the runner's peak)
        self.caches = LayerCaches(cross_k, cross_v, cache_shape, prompt)
        self.cache_bytes = 0
        self._bind()

    def _bind(self) -> None:
        import onnxruntime as ort

        def bound(array: np.ndarray) -> Any:  # CPU OrtValues share the numpy array's memory
            return ort.OrtValue.ortvalue_from_numpy(array)

        caches = self.caches
        rows = caches.k[0].shape[0]
        layers, heads, head_dim = len(caches.k), caches.k[0].shape[1], caches.k[0].shape[3]
        self._token = np.zeros((rows, 1), dtype=np.int64)
        self._position = np.zeros(rows, dtype=np.int64)
        self._logits = np.zeros((rows, self._vocab), dtype=np.float32)
        self._new_k = np.zeros((layers, rows, heads, 1, head_dim), dtype=np.float32)
        self._new_v = np.zeros_like(self._new_k)
        # every buffer is C-ordered (LayerCaches keeps them so): ONNX Runtime ignores a bound
        # buffer it cannot use in place (a fancy-indexed row selection is not C-ordered: a step
        # then wrote into memory of its own)
        binding = self._session.io_binding()
        binding.bind_ortvalue_input("token", bound(self._token))
        binding.bind_ortvalue_input("position", bound(self._position))
        for name, array in caches.inputs().items():
            binding.bind_ortvalue_input(name, bound(array))
        binding.bind_ortvalue_output("logits", bound(self._logits))
        binding.bind_ortvalue_output("new_k", bound(self._new_k))
        binding.bind_ortvalue_output("new_v", bound(self._new_v))
        self._binding = binding
        size = caches.nbytes() + self._new_k.nbytes + self._new_v.nbytes
        if size > self.cache_bytes:
            self.cache_bytes = size
            if self._on_size is not None:
                self._on_size(size)

    def step(self, tokens: Sequence[int], position: int | Sequence[int]) -> np.ndarray:
        """Logits (B, V): a view of the bound buffer, overwritten by the next step. ``position``:
        one for every row, or each row's own."""
        self._token[:, 0] = tokens
        self._position[:] = position  # one for all rows broadcasts; a list must name every row
        self._session.run_with_iobinding(self._binding)
        self.caches.write(self._new_k, self._new_v, position)
        return self._logits

    def keep(self, rows: Sequence[int]) -> None:
        self.caches.keep(rows)
        self._bind()

    def join(self, cross_k: np.ndarray, cross_v: np.ndarray, prompt: PromptCache | None = None) -> None:
        """Rows join after the current ones (empty caches, or their prompt's first slots): the
        buffers grow and are bound again."""
        self.caches.join(cross_k, cross_v, prompt)
        self._bind()

    @property
    def cache(self) -> tuple[np.ndarray, np.ndarray]:
        """(self_k, self_v) as (L, B, nh, S, hs), after the last step."""
        return self.caches.stacked()


class BoundDecoderSteps:
    """One answer's ``decoder_step`` calls on IO-bound buffers (a ``step_caches.DecoderSteps``): a
    ``BoundBatchSteps`` of one row. Not thread-safe: one per answer being decoded."""

    def __init__(
        self,
        session: Any,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        cache_shape: Sequence[int],
        on_size: Callable[[int], None] | None = None,
        prompt: PromptCache | None = None,
    ) -> None:
        self._batch = BoundBatchSteps(session, cross_k, cross_v, cache_shape, on_size, prompt)
        # what this answer's KV cache holds: the caches, the step's outputs and the image's cross
        # keys/values
        self.cache_bytes = self._batch.cache_bytes

    def step(self, token: int, position: int) -> np.ndarray:
        """Logits (1, V) after ``token`` at ``position``: a view of the bound buffer, overwritten
        by the next step."""
        return self._batch.step([token], position)

    @property
    def cache(self) -> tuple[np.ndarray, np.ndarray]:
        """(self_k, self_v) as the last step wrote them (the next step reads them)."""
        return self._batch.cache
