"""Our packed weights as Core ML (iOS 18) compression ops, and what they take once written.

``compress_program`` walks a converted MIL program, finds each float weight constant that is
the dequantized form of one of our packed weights (matched by value), and replaces it with

    scale * (data - offset)          constexpr_blockwise_shift_scale, one block per our group

where ``data`` is the uint8 / uint4 codes (INT8, INT4), or for INT2 a ``constexpr_lut_to_dense``
over uint2 indices (our codes) with the table 0, 1, 2, 3 — Core ML has no 2-bit integer type,
so 2-bit weights are palettized. Scales are float32 (our float16 scales widened: the product of
a code offset and a float16 scale is exact in float32), zero points uint4/uint8 when integral,
else float16. The result decompresses to exactly ``QuantizedWeight.dequantize()``.

``weight_report`` reads a written package back (its MIL program and weight blobs, no Core ML
runtime) and counts the compressed weights and the bits they are stored in.

Example::

    stats = compress_program(mlmodel._mil_program, spec.quantized)   # {"compressed": 28, ...}
    weight_report(ct.utils.load_spec(path), path / WEIGHTS_DIR)["compressed"]["2"]["code_bits"]
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mobile_multimodal.model.quantized_weight import QuantizedWeight

# a float constant smaller than this is a bias, a norm or a position table, not a weight matrix
MIN_WEIGHT_ELEMENTS = 1024


def _key(values: np.ndarray) -> tuple[tuple[int, ...], str]:
    data = np.ascontiguousarray(values, dtype=np.float32).tobytes()
    return tuple(values.shape), hashlib.sha256(data).hexdigest()


def _np_dtype(name: str) -> Any:
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(types.string_to_builtin(name))


def _block_shape(qw: QuantizedWeight) -> tuple[int, ...] | None:
    """The scale/offset shape that makes each Core ML block one of our groups, or None when
    our groups are not whole blocks of the weight's layout (a short last group, or a
    group-wise conv weight whose groups cut across kernel positions)."""
    groups = qw.scales.shape[1]
    if groups * qw.group_size != qw.in_features:
        return None
    if len(qw.shape) == 2:
        return (qw.shape[0], groups)
    if groups == 1:
        return (qw.shape[0],) + (1,) * (len(qw.shape) - 1)
    return None


def compressed_weight(qw: QuantizedWeight, before_op: Any) -> Any:
    """The constexpr ops that decompress to ``qw.dequantize()``, placed before ``before_op``;
    None when ``qw``'s grouping has no Core ML block form (the weight then stays float)."""
    from coremltools.converters.mil import Builder as mb

    block = _block_shape(qw)
    if block is None:
        return None
    rank = len(qw.shape)
    codes = qw.codes().numpy().reshape(qw.shape)
    scale = qw.scales.float().numpy().reshape(block)
    zeros = qw.zeros.float().numpy().reshape(block)
    name = f"{before_op.name}_int{qw.bits}"
    data: Any
    if qw.bits == 2:
        data = mb.constexpr_lut_to_dense(
            indices=codes.astype(_np_dtype("uint2")),
            lut=np.arange(4, dtype=np.float16).reshape((1,) * rank + (4, 1)),
            before_op=before_op,
            name=f"{name}_codes",
        )
        offset = zeros.astype(np.float16)
    else:
        dtype = _np_dtype(f"uint{qw.bits}")
        data = codes.astype(dtype)
        integral = np.array_equal(zeros, np.round(zeros))
        offset = zeros.astype(dtype) if integral else zeros.astype(np.float16)
    return mb.constexpr_blockwise_shift_scale(
        data=data, scale=scale.astype(np.float32), offset=offset, before_op=before_op, name=name
    )


def compress_program(program: Any, quantized: Mapping[str, QuantizedWeight]) -> dict[str, int]:
    """Replace, in ``program``, every float constant equal to one of ``quantized``'s dequantized
    weights by its compressed form. Returns {"compressed": constants replaced, "layers": packed
    weights, "not_found": packed weights with no matching constant (kept float, e.g. a tied
    embedding the converter transposed)}."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.scope import ScopeInfo

    targets = {_key(qw.dequantize().numpy()): qw for qw in quantized.values()}
    replaced: set[int] = set()
    count = 0
    for function in program.functions.values():
        with function:
            for op in list(function.operations):
                if op.op_type != "const":
                    continue
                value = op.outputs[0].val
                if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                    continue
                qw = targets.get(_key(value))
                if qw is None:
                    continue
                # the new ops inherit the constant's scopes (the torch source it came from), which
                # the converter requires of every op
                with mb.scope(*[ScopeInfo(source=src, data=data) for src, data in op.scopes.items()]):
                    new = compressed_weight(qw, op)
                if new is None:
                    continue
                op.enclosing_block.replace_uses_of_var_after_op(
                    anchor_op=op, old_var=op.outputs[0], new_var=new, no_check_var_types=True
                )
                op.enclosing_block.remove_ops([op])
                replaced.add(id(qw))
                count += 1
    layers = len({id(qw) for qw in quantized.values()})
    return {"compressed": count, "layers": layers, "not_found": layers - len(replaced)}


def load_program(model_spec: Any, weights_dir: Path) -> Any:
    """The MIL program of a written package, with its weights (no Core ML runtime needed)."""
    from coremltools.converters.mil.frontend.milproto.load import load

    return load(
        model_spec, specification_version=model_spec.specificationVersion, file_weights_dir=str(weights_dir)
    )


def _bits(var: Any) -> int:
    from coremltools.converters.mil.mil import types

    width = int(re.sub(r"\D", "", types.builtin_to_string(var.dtype)) or 32)
    return width * int(np.prod(var.shape))


def _stored_bits(var: Any) -> tuple[int, int, int]:
    """(all bits, code bits, bits per code) of the constants a compressed weight is built from."""
    op = var.op
    if op.op_type == "const":
        return _bits(var), _bits(var), _bits(var) // max(1, int(np.prod(var.shape)))
    if op.op_type == "constexpr_lut_to_dense":
        indices = op.inputs["indices"]
        width = _bits(indices) // max(1, int(np.prod(indices.shape)))
        return _bits(indices) + _bits(op.inputs["lut"]), _bits(indices), width
    raise ValueError(f"unexpected producer {op.op_type} of compressed weight data")


def weight_report(model_spec: Any, weights_dir: Path) -> dict[str, Any]:
    """Ops by type; the compressed weights by code width ("2", "4", "8": layers, weights,
    stored bits incl. scales/zero points/tables, code bits); float weight elements left."""
    program = load_program(model_spec, weights_dir)
    ops = list(program.functions["main"].operations)
    by_width: dict[str, dict[str, int]] = {}
    float_elements = 0
    for op in ops:
        if op.op_type == "constexpr_blockwise_shift_scale":
            data_bits, code_bits, width = _stored_bits(op.inputs["data"])
            extra = _bits(op.inputs["scale"]) + (_bits(op.inputs["offset"]) if "offset" in op.inputs else 0)
            entry = by_width.setdefault(str(width), {"layers": 0, "weights": 0, "bits": 0, "code_bits": 0})
            entry["layers"] += 1
            entry["weights"] += int(np.prod(op.outputs[0].shape))
            entry["bits"] += data_bits + extra
            entry["code_bits"] += code_bits
        elif op.op_type == "const":
            value = op.outputs[0].val
            if (
                isinstance(value, np.ndarray)
                and value.dtype.kind == "f"
                and value.size >= MIN_WEIGHT_ELEMENTS
            ):
                float_elements += value.size
    return {
        "ops": dict(sorted(Counter(op.op_type for op in ops).items())),
        "compressed": dict(sorted(by_width.items())),
        "float_weight_elements": float_elements,
    }
