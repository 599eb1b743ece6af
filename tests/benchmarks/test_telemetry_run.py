"""The telemetry benchmark's statistics and report, on known numbers (the runs need servers and a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmarks.telemetry import report
from benchmarks.telemetry import run as bench


def test_percentile_interpolates_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 100) == 5.0
    assert bench.percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_overhead_and_verdict_are_relative_to_the_off_arm() -> None:
    assert bench.overhead([10.2, 10.2, 10.2], [10.0, 10.0, 10.0]) == pytest.approx(0.02)
    assert bench.overhead([9.0], [10.0]) == pytest.approx(-0.1)
    assert bench.task_result([10.2], [10.0])["pass"] is True
    assert bench.task_result([10.4], [10.0])["pass"] is False  # 4 % is over the 3 % target


def test_arms_differ_only_in_telemetry() -> None:
    on, off = bench.arm_env("on", "http://127.0.0.1:4318"), bench.arm_env("off", "http://127.0.0.1:4318")
    assert on["OTEL_TRACES_SAMPLER"] == "always_on"  # 100 % sampling
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert on["MOBILE_MM_TELEMETRY_ENABLED"] == "true" and off["MOBILE_MM_TELEMETRY_ENABLED"] == "false"
    assert off["OTEL_SDK_DISABLED"] == "true"


def _result() -> dict[str, Any]:
    samples = {"on": [10.1, 10.2, 10.4], "off": [10.0, 10.0, 10.1]}
    inproc = bench.task_result(samples["on"], samples["off"], median_block_difference_ms=0.2)
    http = bench.task_result(
        samples["on"], samples["off"], session_overheads=[0.01, 0.03], median_paired_difference_ms=0.2
    )
    return {
        "environment": {
            "model_dir": "m",
            "model": {"name": "m", "version": "1"},
            "cpu_count": 2,
            "load_average_at_start": (0.1, 0.2, 0.3),
            "date": "2026-01-01T00:00:00Z",
        },
        "inprocess": {
            "blocks": 4,
            "requests_per_block": 3,
            "tasks": {"captioning": inproc},
            "samples_ms": {"captioning": samples},
            "evidence": {"spans": 24, "scrapes": 3},
        },
        "http": {
            "sessions": 2,
            "rounds": 1,
            "requests_per_round": 3,
            "tasks": {"captioning": http},
            "evidence": {"spans": 48, "log_lines_on": 6, "log_lines_off": 0, "scrapes": 4.0},
        },
        "micro": {
            "blocks": 4,
            "requests_per_block": 10,
            "median_us": {"on": 250.0, "off": 70.0},
            "median_diff_us": 180.0,
            "spans_per_request": 8.0,
            "share_of_p50": {"captioning": 0.018},
        },
    }


def test_report_states_pass_or_fail(tmp_path: Path) -> None:
    result = _result()
    report.write_markdown(result, tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "| captioning | 10.00 | 10.20 | +2.00 % | +0.200 | 10.10 | 10.40 | yes |" in text
    assert "| captioning | 10.00 | 10.20 | +2.00 % | +1.0 % +3.0 % | 10.10 | 10.40 | yes |" in text
    assert "24 spans reached the OTLP receiver" in text
    assert "telemetry adds 180 µs per request" in text and "captioning +1.80 %" in text
    assert report.plot(result, tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
