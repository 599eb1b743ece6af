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

Example::

    runner = BundleSessions(Path("bundle"), {"decoder_step": "decoder_step.onnx"}, threads=1)
    runner.run("decoder_step", inputs)["logits"]
    runner.widened          # {'decoder_step': 28}: 2-bit MatMulNBits served from 4-bit containers
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobile_multimodal.export.onnx import pack_low_first

WIDE_BITS = 4


def unpack_low_first(packed: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) bytes -> (..., n * 8 // bits) codes, element i of a byte at bit offset i * bits
    (ONNX Runtime's order; the inverse of ``export.onnx.pack_low_first``)."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    out = np.stack([(packed >> (bits * i)) & mask for i in range(per_byte)], axis=-1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * per_byte).astype(np.uint8)


def widen_2bit_matmuls(proto: Any) -> int:
    """Rewrite every 2-bit MatMulNBits of ``proto`` (an onnx.ModelProto) as a 4-bit one holding
    the same codes; returns how many. Float zero points stay as they are (one per block either way)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in proto.graph.initializer}
    count = 0
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        attrs = {a.name: a for a in node.attribute}
        if attrs["bits"].i != 2:
            continue
        n_out = attrs["N"].i
        b = initializers[node.input[1]]
        codes = unpack_low_first(numpy_helper.to_array(b), 2)  # (N, k_blocks, block)
        k_blocks = codes.shape[1]
        b.CopyFrom(numpy_helper.from_array(pack_low_first(codes, WIDE_BITS), b.name))
        if len(node.input) > 3 and node.input[3] in initializers:
            zp = initializers[node.input[3]]
            zeros = numpy_helper.to_array(zp)
            if zeros.dtype == np.uint8:  # packed like the codes, each row padded to whole bytes
                rows = unpack_low_first(zeros.reshape(n_out, -1), 2)[:, :k_blocks]
                per_byte = 8 // WIDE_BITS
                padded = np.zeros((n_out, -(-k_blocks // per_byte) * per_byte), dtype=np.uint8)
                padded[:, :k_blocks] = rows
                zp.CopyFrom(numpy_helper.from_array(pack_low_first(padded, WIDE_BITS).reshape(-1), zp.name))
        attrs["bits"].i = WIDE_BITS
        count += 1
    return count


class BundleSessions:
    """One ONNX Runtime session per graph (CPU), as a ``GraphRunner`` for ``decode.BundleModel``."""

    def __init__(
        self, directory: Path, files: dict[str, str], threads: int = 1, widen_2bit: bool = True
    ) -> None:
        import onnx
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's optimizer warnings are not the operator's business
        self.sessions: dict[str, Any] = {}
        self.output_names: dict[str, list[str]] = {}
        self.widened: dict[str, int] = {}
        for name, file in files.items():
            proto = onnx.load(str(directory / file))
            self.widened[name] = widen_2bit_matmuls(proto) if widen_2bit else 0
            session = ort.InferenceSession(
                proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            self.sessions[name] = session
            self.output_names[name] = [o.name for o in session.get_outputs()]

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names[graph]
        return dict(zip(names, self.sessions[graph].run(names, inputs), strict=True))
