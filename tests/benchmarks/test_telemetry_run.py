"""The telemetry benchmark: its statistics and report on known numbers, and a short real in-process run."""

from __future__ import annotations

import asyncio
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


def test_the_interval_resamples_blocks() -> None:
    off = [10.0, 10.0, 11.0, 11.0, 12.0, 12.0]  # three blocks of two
    low, high = bench.bootstrap_ci([x * 1.02 for x in off], off, per_block=2)
    assert low == pytest.approx(0.02) and high == pytest.approx(0.02)  # 2 % in every block
    on = [10.0, 10.0, 11.0, 11.0, 13.2, 13.2]  # +10 % in one block of three
    low, high = bench.bootstrap_ci(on, off, per_block=2)
    assert low == pytest.approx(0.0) and 0.05 < high <= 0.1 + 1e-9


def test_arms_differ_only_in_telemetry() -> None:
    on, off = bench.arm_env("on", "http://127.0.0.1:4318"), bench.arm_env("off", "http://127.0.0.1:4318")
    assert on["OTEL_TRACES_SAMPLER"] == "always_on"  # 100 % sampling
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert on["MOBILE_MM_TELEMETRY_ENABLED"] == "true" and off["MOBILE_MM_TELEMETRY_ENABLED"] == "false"
    assert off["OTEL_SDK_DISABLED"] == "true"


def _result() -> dict[str, Any]:
    samples = {"on": [10.1, 10.2, 10.4], "off": [10.0, 10.0, 10.1]}
    inproc = bench.task_result(
        samples["on"],
        samples["off"],
        median_block_difference_ms=0.2,
        busy_p50_overhead=0.025,
        p50_overhead_ci95=(0.01, 0.03),
    )
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
    row = "| captioning | 10.00 | 10.20 | +2.00 % | +1.00 % to +3.00 % | +0.200 | 10.10 | 10.40 | yes |"
    assert row in text
    assert "| captioning | 10.00 | 10.20 | +2.00 % | +1.0 % +3.0 % | 10.10 | 10.40 | yes |" in text
    assert "24 spans reached the OTLP receiver" in text
    assert "the p50 overhead is captioning +2.50 %" in text
    assert "telemetry adds 180 µs per request" in text and "captioning +1.80 %" in text
    assert report.plot(result, tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_in_process_measurement_runs_both_arms_for_real(tmp_path: Path) -> None:
    """A short real run: the bundled model, spans to a real receiver, arms switched in one process."""
    from benchmarks.telemetry import inprocess
    from tests.integration.otlp_receiver import OtlpReceiver

    from mobile_multimodal.model import bundled_model_dir
    from mobile_multimodal.observability import tracing
    from mobile_multimodal.observability.logging import shutdown_logging

    with OtlpReceiver() as receiver:
        measured = asyncio.run(inprocess.measure(bundled_model_dir(), ("ocr",), 2, 3, receiver.endpoint))
        spans = receiver.snapshot()
    samples, busy = measured["samples"]["ocr"], measured["busy_ms"]["ocr"]
    assert len(samples["on"]) == len(samples["off"]) == 6
    assert all(b >= s > 0 for b, s in zip(busy["on"], samples["on"], strict=True))
    assert len(measured["block_median_diffs_ms"]["ocr"]) == 2
    # the on arm's requests were traced (8 spans each, settling requests included); the off arm's not
    traced = {s.trace_id for s in spans if s.name == "POST /inference"}
    assert len(traced) == 2 * (inprocess.SETTLE + 3)
    assert {s.name for s in spans} >= {"POST /inference", "model_inference", "authentication", "response"}
    assert tracing._recorder is None  # left as the off arm's lifespan configured it
    shutdown_logging()  # it wrote into a temporary directory that is gone now
