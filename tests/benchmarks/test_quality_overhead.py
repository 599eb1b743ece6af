"""The live-quality overhead benchmark end to end, tiny: one real server, arms switched by SIGHUP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_overhead_benchmark_switches_arms_in_one_server(tmp_path: Path) -> None:
    from benchmarks.quality_overhead.run import main, summarize

    out = tmp_path / "out"
    argv = ["--pairs", "1", "--block-s", "1", "--busy-blocks", "1", "--env", "MOBILE_MM_CANARY_SIZE=4"]
    result = main([*argv, "--out", str(out)])
    blocks = result["blocks"]
    assert [b["arm"] for b in blocks] == ["off", "defaults", "busy"]
    # every block followed a real reload; the arms with a canary waited out the run it started
    assert all(b["reload_s"] > 0 for b in blocks)
    assert blocks[0]["canary_wait_s"] == 0
    assert blocks[1]["canary_wait_s"] > 0 and blocks[2]["canary_wait_s"] > 0
    assert blocks[0]["background"]["canary_runs"] == 0  # off: no canary ran while it was measured
    assert all(b["requests"] > 0 and b["non_2xx"] == 0 for b in blocks)
    summary = result["summary"]
    assert summary["p95_c1_change_per_pair"] == [pytest.approx(blocks[1]["p95_ms"] / blocks[0]["p95_ms"] - 1)]
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["within_3_percent"] == summarize(saved["blocks"])["within_3_percent"]
    md = (out / "results.md").read_text()
    assert "load average at start" in md and "block pairs" in md and "bootstrap 95% interval" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_pairs_are_formed_in_abba_order_whatever_arm_comes_first() -> None:
    from benchmarks.quality_overhead.run import summarize

    def b(arm: str, p95: float) -> dict[str, object]:
        return {"arm": arm, "p95_ms": p95, "p50_ms": p95 / 2, "rps": 1.0}

    blocks = [b("off", 10), b("defaults", 11), b("defaults", 12), b("off", 10), b("busy", 30)]
    summary = summarize(blocks)
    assert summary["p95_c1_change_per_pair"] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert summary["p95_c1_change_defaults_vs_off"] == pytest.approx(0.15)
    assert not summary["within_3_percent"]
