from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mobile_multimodal.cli import app
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.quantized_layers import PackedWeight
from mobile_multimodal.training.evaluate import TASKS

runner = CliRunner()


def _eval(model: Path, quantization: str, limit: int) -> dict:
    # the tasks quantize scores and stores (the generator's splits; `eval` also runs user-style ones)
    args = ["--model", str(model), "--quantization", quantization, "--json", "--limit", str(limit)]
    result = runner.invoke(app, ["eval", *args, "--tasks", ",".join(TASKS)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rtn", "gptq", "qat"])
def test_quantize_writes_a_loadable_variant_whose_reported_loss_is_what_eval_measures(
    method: str, tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    model_dir = tiny_model.save(tmp_path / "model")
    report_path = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "quantize",
            "--bits",
            "2",
            "--method",
            method,
            "--model",
            str(model_dir),
            "--group-size",
            "16",
            "--out",
            str(model_dir / "int2"),
            "--report",
            str(report_path),
            "--limit",
            "6",
            "--calibration-batches",
            "1",
            "--qat-steps",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert (report["quantization"], report["method"], report["bits"], report["group_size"]) == (
        "int2",
        method,
        2,
        16,
    )
    assert report["size_bytes"] == (model_dir / "int2" / "model.safetensors").stat().st_size
    assert report["size_bytes"] < report["fp32_size_bytes"] / 3
    assert 2 < report["bits_per_weight"]["by_bits"]["2"]["bits_per_weight"] < 4.5

    fp32 = _eval(model_dir, "fp32", 6)
    int2 = _eval(model_dir, "int2", 6)
    assert int2["quantization"] == "int2"
    for task, row in report["tasks"].items():
        assert row["quantized"] == int2["tasks"][task]["primary"]
        assert row["fp32"] == fp32["tasks"][task]["primary"]
        ref = fp32["tasks"][task]["primary"]
        expected = None if ref == 0 else (ref - int2["tasks"][task]["primary"]) / ref
        assert row["accuracy_loss"] == expected
    manifest = json.loads((model_dir / "int2" / "manifest.json").read_text())
    assert manifest["quantization"]["method"] == method
    # the defaults at 2 bits (QuantizeOptions.resolved): free zero points for rtn, quarter-code ones
    # in the decoder and free ones elsewhere for gptq (QAT learns its own), and GPTQ only where
    # calibration covers a Linear (8 rows per input column)
    expected = {"qat": "learned", "rtn": "free", "gptq": "decoder-quarter"}[method]
    assert manifest["quantization"]["zero_points"] == expected
    if method != "rtn":
        assert manifest["quantization"]["calibration"]["min_rows_per_input"] == (8 if method == "gptq" else 0)
    assert manifest["eval"]["tasks"] == int2["tasks"]
    # the live canary's baseline: what this variant scores on the canary set, loaded as served
    from mobile_multimodal.model import MobileMultiModalLLM
    from mobile_multimodal.training.canary_set import evaluate_canary

    variant = MobileMultiModalLLM.from_pretrained(model_dir, quantization="int2")
    assert manifest["canary"] == evaluate_canary(variant, manifest["canary"]["size"])


def test_quantize_rejects_bad_options_with_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["quantize", "--bits", "3", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "--bits must be 8, 4 or 2" in result.output
    result = runner.invoke(app, ["quantize", "--bits", "2", "--method", "awq", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--method must be one of" in result.output
    result = runner.invoke(
        app, ["quantize", "--bits", "2", "--zero-points", "half", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code != 0 and "--zero-points must be one of" in result.output
    result = runner.invoke(
        app, ["quantize", "--bits", "2", "--gptq-min-rows", "-1", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code != 0 and "--gptq-min-rows must be >= 0" in result.output
    result = runner.invoke(
        app,
        ["quantize", "--bits", "2", "--method", "rtn", "--gptq-min-rows", "8", "--out", str(tmp_path / "x")],
    )
    assert result.exit_code != 0 and "--gptq-min-rows applies to --method gptq or qat" in result.output


@pytest.mark.parametrize(
    ("bits", "method", "given", "expected"),
    [
        (2, "gptq", {}, ("decoder-quarter", 8)),  # how the bundled INT2 is built
        (2, "rtn", {}, ("free", 0)),  # quarter codes cost rtn more (no GPTQ to absorb them)
        (2, "qat", {}, ("whole", 0)),  # QAT learns its zero points from GPTQ's start
        (4, "gptq", {}, ("whole", 0)),  # nothing measured to move the defaults at 4 and 8 bits
        (8, "rtn", {}, ("whole", 0)),
        (2, "gptq", {"zero_points": "whole", "gptq_min_rows": 0}, ("whole", 0)),  # the former defaults
        (4, "gptq", {"zero_points": "free", "gptq_min_rows": 8}, ("free", 8)),  # asked for: kept
        (2, "gptq", {"zero_points": "free"}, ("free", 8)),  # the INT2 shipped before 2026-12-07 evening
    ],
)
def test_the_quantize_defaults_are_chosen_by_bits_and_method(
    bits: int, method: str, given: dict[str, object], expected: tuple[str, int], tmp_path: Path
) -> None:
    from mobile_multimodal.training.quantize import QuantizeOptions

    options = QuantizeOptions(bits=bits, out=tmp_path, method=method, **given)  # type: ignore[arg-type]
    options.validate()
    resolved = options.resolved()
    assert (resolved.zero_points, resolved.gptq_min_rows) == expected
    assert resolved.resolved() == resolved  # nothing left to choose


def test_free_zero_points_and_the_calibration_rows_rule_are_written_and_recorded(
    tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    model_dir = tiny_model.save(tmp_path / "model")
    out = model_dir / "int2"
    args = ["--bits", "2", "--model", str(model_dir), "--group-size", "16", "--out", str(out)]
    result = runner.invoke(
        app,
        [
            "quantize",
            *args,
            "--limit",
            "2",
            "--calibration-batches",
            "1",
            "--zero-points",
            "free",
            "--gptq-min-rows",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    section = json.loads((out / "manifest.json").read_text())["quantization"]
    assert section["zero_points"] == "free" and section["calibration"]["min_rows_per_input"] == 8
    rounded = section["calibration"]["rounded_to_nearest"]
    assert "text_encoder.proj" in rounded  # one row per caption: too few for its Hessian
    variant = MobileMultiModalLLM.from_pretrained(model_dir, quantization="int2")
    low = [m.zeros.float() for m in variant.network.modules() if isinstance(m, PackedWeight) and m.bits < 8]
    assert low and all(bool((z != z.round()).any()) for z in low)  # not whole codes


def test_decoder_quarter_zero_points_are_quarter_codes_in_the_decoder_and_free_elsewhere(
    tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    """``--zero-points decoder-quarter`` (the 2-bit default): the decoder's zero points on the
    quarter-code grid (what lets ONNX Runtime serve its per-token graph with no correction), free
    float16 ones in every other low-bit layer."""
    model_dir = tiny_model.save(tmp_path / "model")
    out = model_dir / "int2"
    args = ["--bits", "2", "--model", str(model_dir), "--group-size", "16", "--out", str(out)]
    result = runner.invoke(app, ["quantize", *args, "--limit", "2", "--calibration-batches", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["quantization"]["zero_points"] == "decoder-quarter"
    variant = MobileMultiModalLLM.from_pretrained(model_dir, quantization="int2")
    low = {
        name: m.zeros.float()
        for name, m in variant.network.named_modules()
        if isinstance(m, PackedWeight) and m.bits < 8
    }
    decoder = [z for name, z in low.items() if name.startswith("decoder.")]
    others = [z for name, z in low.items() if not name.startswith("decoder.")]
    assert decoder and others
    assert all(torch.equal(z * 4, (z * 4).round()) for z in decoder)
    assert any(bool((z != z.round()).any()) for z in decoder)  # quarter codes, not only whole ones
    assert all(not torch.equal(z * 4, (z * 4).round()) for z in others)  # free: off any quarter grid
