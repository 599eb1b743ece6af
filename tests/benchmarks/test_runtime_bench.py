"""The runtime benchmark's arithmetic and report, on known numbers (the real run is minutes long:
``python -m benchmarks.runtime.run``; its measuring code is the serving code these tests cover)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmarks.runtime import report
from benchmarks.runtime import run as bench


def test_percentile_interpolates_like_numpy() -> None:
    assert bench.percentile([5.0, 1.0, 4.0, 2.0, 3.0], 50) == 3.0
    assert bench.percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_per_token_is_the_marginal_cost_of_the_extra_tokens() -> None:
    # 10 tokens in 50 ms, 2 tokens in 18 ms: the 8 extra tokens cost 4 ms each
    assert bench.per_token_ms(0.050, 0.018, 10, 2) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        bench.per_token_ms(0.05, 0.02, 2, 2)


class _Captioner:
    def __init__(self, caption: str) -> None:
        self.caption = caption

    def generate_captions(self, images: list[Any], max_tokens: int = 32) -> list[str]:
        return [" ".join(self.caption.split()[:max_tokens])]


def test_token_count_includes_eos_or_the_token_past_the_budget() -> None:
    model = _Captioner("a large red circle in the center")
    assert bench.token_count(model, None, 32) == 8  # seven words and <eos>
    assert bench.token_count(model, None, 1) == 2  # the budget cut it: one past it was decoded


def _result() -> dict[str, Any]:
    def timing(ms: float) -> dict[str, float]:
        return {"median_ms": ms, "p90_ms": ms * 1.1}

    tasks = {
        task: {"identical_outputs": True, "pytorch": timing(20.0), "onnxruntime": timing(8.0)}
        for task in bench.TASKS
    }
    return {
        "options": {"threads": 1, "repeats": 3},
        "machine": {"cpu": "cpu", "cores": 2, "torch": "2.13.0", "onnxruntime": "1.32.0"},
        "notes": ["busy-machine smoke"],
        "precisions": {
            "fp32": {
                "per_token": {"pytorch": timing(6.0), "onnxruntime": timing(1.5)},
                "tasks": tasks,
                "batch": {
                    "size": 16,
                    "identical_outputs": True,
                    "pytorch": timing(500.0),
                    "onnxruntime": timing(625.0),
                },
            },
            "int2": {
                "per_token": {
                    "pytorch": timing(6.0),
                    "onnxruntime": timing(2.5),
                    "onnxruntime_shipped": timing(12.0),
                },
                "tasks": tasks,
            },
        },
    }


def test_summary_and_report_judge_the_target_per_precision(tmp_path: Path) -> None:
    result = _result()
    result["summary"] = bench.summarize(result)
    assert result["summary"]["fp32"]["per_token_speedup"] == pytest.approx(4.0)
    assert result["summary"]["fp32"]["per_token_target_met"] is True
    assert result["summary"]["int2"]["per_token_speedup"] == pytest.approx(2.4)
    assert result["summary"]["int2"]["per_token_target_met"] is False
    assert result["summary"]["int2"]["per_token_speedup_shipped"] == pytest.approx(0.5)
    assert result["summary"]["int2"]["task_speedup"]["ocr"] == pytest.approx(2.5)
    assert result["summary"]["fp32"]["batch_speedup"] == pytest.approx(0.8)  # batching pays in PyTorch
    text = report.markdown(result, result["notes"])
    assert "| fp32 | onnxruntime | 6.000 | 1.500 | 4.00x | met |" in text
    assert "| int2 | onnxruntime | 6.000 | 2.500 | 2.40x | NOT met |" in text
    assert "| int2 | onnxruntime_shipped | 6.000 | 12.000 | 0.50x | NOT met |" in text
    assert "> busy-machine smoke" in text
    assert "| fp32 | 500.0 | 625.0 | 0.80x | yes |" in text
    report.write_markdown(result, tmp_path / "results.md")
    assert (tmp_path / "results.md").read_text() == text


def test_the_served_weights_table_times_both_forms_per_batch_rows() -> None:
    """Real ONNX Runtime sessions, a small shape: every row count timed for both weight forms."""
    rows = bench.served_weights_by_rows(32, 48, 5)
    assert [r["rows"] for r in rows] == [1, 4, 16, 64]
    assert all(r["packed_us"] > 0 and r["float_us"] > 0 for r in rows)
    result = {**_result(), "served_weights_us": {"shape": [32, 48], "rows": rows}}
    result["summary"] = bench.summarize(result)
    text = report.markdown(result, result["notes"])
    assert "| rows | packed us | float us | packed / float |" in text
    first = rows[0]
    ratio = first["packed_us"] / first["float_us"]
    assert f"| 1 | {first['packed_us']:.1f} | {first['float_us']:.1f} | {ratio:.2f} |" in text
