"""The quantization benchmark's own pieces: the ORT peer's weight recovery and the target checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from benchmarks.quantization.run import check_targets, int2_ablations


def test_ort_peer_recovers_the_exact_weight_its_kernel_computes_with() -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx_ir")
    from benchmarks.quantization import peers

    torch.manual_seed(0)
    w = torch.randn(48, 160) * 0.05
    wq, stored = peers.ort_rtn_weight(w, bits=2)
    assert wq.shape == w.shape and not torch.equal(wq, w)
    # 2-bit codes of 48 rows x 3 blocks of 64 (K padded), float32 scales, 2-bit zero points
    assert stored == 48 * 3 * 16 + 48 * 3 * 4 + 48 * 1
    # 4 levels per block: the recovered weight takes at most 4 values in each row's first block
    assert max(len(set(row[:64].tolist())) for row in wq) <= 4
    # and it is what the MatMulNBits kernel multiplies by
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    q = MatMulNBitsQuantizer(
        peers._matmul_model(w.numpy()),
        bits=2,
        block_size=64,
        is_symmetric=False,
        algo_config=DefaultWeightOnlyQuantConfig(block_size=64, is_symmetric=False, bits=2),
    )
    q.process()
    model = getattr(q.model, "model", q.model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 160)
    got = torch.from_numpy(sess.run(None, {"X": x.numpy()})[0])
    assert torch.allclose(got, x @ wq.T, atol=1e-5)


def _row(name: str, family: str, bits: int, loss: float, size: int | None = None) -> dict:
    return {"name": name, "family": family, "bits": bits, "max_accuracy_loss": loss, "size_bytes": size}


def test_target_checks_compare_our_variants_with_the_targets_and_the_peers() -> None:
    results = {
        "fp32": {"size_bytes": 1000},
        "rows": [
            _row("fp32", "fp32", 32, 0.0, 1000),
            _row("ours int8 (rtn)", "ours", 8, 0.004, 300),
            _row("ours int4 (gptq)", "ours", 4, 0.02, 200),
            _row("ours int2 (qat)", "ours", 2, 0.03, 99),
            _row("ours int2 (rtn only)", "ours-ablation", 2, 0.5),
            _row("hqq int2", "hqq", 2, 0.2),
            _row("quanto int2", "quanto", 2, 0.01),
            _row("quanto int4", "quanto", 4, 0.001),
        ],
    }
    checks = check_targets(results)
    assert checks["int2_size_at_most_a_tenth"]["pass"] is True
    assert checks["int8_max_loss_at_most_0.005"]["pass"] is True
    assert checks["int4_max_loss_at_most_0.01"]["pass"] is False
    assert checks["int2_max_loss_at_most_0.05"]["pass"] is True
    assert checks["int2_loses_less_than_hqq_int2"]["pass"] is True
    assert checks["int2_loses_less_than_quanto_int2"]["pass"] is False
    # peers are compared at 2 bits only, ablations never
    assert not any("ablation" in k or k.endswith("int4") for k in checks)


def test_int2_ablations_undo_each_choice_of_the_shipped_int2_once() -> None:
    def labels(shipped: dict[str, Any]) -> list[str]:
        return [label for label, _, _ in int2_ablations(None, {}, [], shipped)]  # type: ignore[arg-type]

    shipped = {"method": "gptq", "zero_points": "free", "calibration": {"min_rows_per_input": 8}}
    assert labels(shipped) == [
        "ours int2 (rtn, free zero points)",
        "ours int2 (gptq, whole zero points, min rows 8)",
        "ours int2 (gptq, free zero points, min rows 0)",
        "ours int2 (gptq, whole zero points, min rows 0)",  # quantize's former defaults
    ]
    shipped = {"method": "gptq", "zero_points": "decoder-quarter", "calibration": {"min_rows_per_input": 8}}
    assert labels(shipped) == [
        "ours int2 (rtn, decoder-quarter zero points)",
        "ours int2 (gptq, free zero points, min rows 8)",  # the decoder's free too: the INT2 before
        "ours int2 (gptq, decoder-quarter zero points, min rows 0)",
        "ours int2 (gptq, whole zero points, min rows 0)",
    ]
    defaults = {"method": "gptq", "calibration": {}}  # a manifest written before the options existed
    assert labels(defaults) == [
        "ours int2 (rtn, whole zero points)",
        "ours int2 (gptq, free zero points, min rows 0)",
        "ours int2 (gptq, whole zero points, min rows 8)",
    ]
