"""GPTQ: error-compensating quantization calibrated on training batches from our corpus.

For each Linear with weight W (out, n) and calibration inputs X (rows, n), GPTQ quantizes W one
input column at a time and spreads each column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian H = XᵀX of the layer's squared output error
||XWᵀ - XŴᵀ||². Group parameters are chosen when the first column of a group is reached, from
the already error-updated weights (with a clipping search), as in the reference implementation.

The Hessians are collected in one pass of the float model over the calibration batches, each
run through the caller's ``forward(network, batch)`` (training's loss forward runs every
branch: captioning/VQA decoder, retrieval encoders, OCR reader), so each layer sees the inputs
it sees in use. This package never imports training: the caller supplies batches and forward.
Conv and embedding weights (INT8 in every policy) are rounded to nearest, and so, on request
(``min_rows_per_input``, measured best at ``MIN_ROWS_PER_INPUT``), is a Linear whose calibration
gave fewer input rows per input column than that: its Hessian cannot be trusted
(``GptqResult.rounded_to_nearest`` names them).

References: Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers" (Algorithm 1, lazy batch updates, Cholesky form of H⁻¹).

Example::

    hessians = calibrate(net, names, [builder.build(i) for i in range(8)], calibration_forward).hessians
    qw = gptq_quantize(net.get_submodule(name).weight, hessians[name], bits=2, group_size=80)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from mobile_multimodal.model.quantized_weight import LayerSpec, QuantizedWeight, from_codes
from mobile_multimodal.quantization.rtn import layer_weight
from mobile_multimodal.quantization.schemes import layer_zero_points, minmax_params, qmax, quantize_rtn

BLOCK = 128
DAMP = 0.01
# GPTQ trusts its Hessian to say which directions of a layer's input matter. A layer that sees one
# row per example (a pooled embedding's projection: 256 rows of 640 inputs in 16 calibration
# batches) gets a Hessian of rank below its width, and GPTQ moves rounding error into the
# directions calibration never saw but use does. Such layers are rounded to nearest instead.
# On the bundled model at INT2 (free zero points): retrieval's recall@1 over five pools of 1,000
# lost 1.0% with GPTQ everywhere, 0.3% with this rule at 8 rows per input (the other tasks as
# before). ``mobile-mm quantize`` applies it at 2 bits with gptq unless told otherwise (off, 0, at
# 4 and 8 bits: training/quantize.QuantizeOptions.resolved); the bundled INT2 is built with it.
MIN_ROWS_PER_INPUT = 8

B = TypeVar("B")  # a calibration batch: whatever ``forward`` takes
N = TypeVar("N", bound=nn.Module)


class Calibration(NamedTuple):
    hessians: dict[str, Tensor]  # layer name -> mean of xᵀx over its input rows (n, n)
    rows: dict[str, int]  # layer name -> how many input rows that mean is over


class GptqResult(NamedTuple):
    quantized: dict[str, QuantizedWeight]  # every planned layer
    rounded_to_nearest: dict[str, int]  # Linears left to round-to-nearest -> their calibration rows


@torch.no_grad()
def calibrate(
    network: N,
    names: Iterable[str],
    batches: Iterable[B],
    forward: Callable[[N, B], object],
) -> Calibration:
    """Layer name -> mean of xᵀx over every input row the layer saw (n, n), and how many rows
    that was, while ``forward(network, batch)`` runs over ``batches`` (its result is not used)."""
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    hooks = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]

        return hook

    for name in names:
        hooks.append(network.get_submodule(name).register_forward_hook(hook_for(name)))
    was_training = network.training
    network.eval()
    try:
        for batch in batches:
            forward(network, batch)
    finally:
        for h in hooks:
            h.remove()
        network.train(was_training)
    return Calibration({name: sums[name] / rows[name] for name in sums}, rows)


def _inverse_hessian_factor(h: Tensor) -> Tensor:
    """Upper Cholesky factor of H⁻¹ (with dampening), as GPTQ consumes it row by row."""
    damp = DAMP * torch.mean(torch.diag(h))
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(hinv, upper=True)


@torch.no_grad()
def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    bits: int,
    group_size: int | None,
    clip_search: bool = True,
    zero_points: str = "whole",
) -> QuantizedWeight:
    """GPTQ of one (out, n) weight given the layer's input Hessian (n, n)."""
    w = weight.detach().reshape(weight.shape[0], -1).double().clone()
    out, n = w.shape
    gs = n if group_size is None else min(group_size, n)
    h = hessian.double().clone()
    dead = torch.diag(h) == 0  # inputs that were always zero: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _inverse_hessian_factor(h)
    # blocks hold whole groups, so a group's parameters see all the updates before it
    block = gs * max(1, BLOCK // gs) if gs < n else BLOCK
    codes = torch.zeros(out, n, dtype=torch.uint8)
    ng = -(-n // gs)
    scales = torch.zeros(out, ng)
    zeros = torch.zeros(out, ng)
    top = qmax(bits)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:
                g = col // gs
                current = w1[:, i : i + gs] if gs < n else w[:, col:]
                s, z = minmax_params(current.float(), bits, current.shape[1], clip_search, zero_points)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
                s64, z64 = scales[:, g].double(), zeros[:, g].double()
            q = torch.round(w1[:, i] / s64 + z64).clamp(0, top)
            codes[:, col] = q.to(torch.uint8)
            e = (w1[:, i] - (q - z64) * s64) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return from_codes(codes, scales, zeros, bits, gs, tuple(weight.shape))


def quantize_gptq_layers(
    network: N,
    plan: dict[str, LayerSpec],
    batches: Iterable[B],
    forward: Callable[[N, B], object],
    clip_search: bool = True,
    min_rows_per_input: int = 0,
    zero_points: str = "whole",
) -> GptqResult:
    """GPTQ for every planned Linear whose calibration saw at least ``min_rows_per_input`` input
    rows per input column, round-to-nearest for the rest (those Linears, conv, embedding); the
    Hessians come from ``forward(network, batch)`` over ``batches``."""
    linear = [name for name, spec in plan.items() if spec.kind == "linear"]
    calibration = calibrate(network, linear, batches, forward)
    out: dict[str, QuantizedWeight] = {}
    rounded: dict[str, int] = {}
    for name, spec in plan.items():
        weight = layer_weight(network, name)
        rows = calibration.rows.get(name, 0)
        if name in calibration.hessians and rows >= min_rows_per_input * weight.shape[1]:
            hessian = calibration.hessians[name]
            zeros = layer_zero_points(zero_points, name)
            out[name] = gptq_quantize(weight, hessian, spec.bits, spec.group_size, clip_search, zeros)
        else:
            if spec.kind == "linear":
                rounded[name] = rows
            out[name] = quantize_rtn(
                weight, spec.bits, spec.group_size, zero_points=layer_zero_points(zero_points, name)
            )
    return GptqResult(out, rounded)
