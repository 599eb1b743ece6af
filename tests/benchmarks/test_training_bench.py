"""The training benchmark's step arithmetic, and one real (tiny) measurement through its path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.training import run as bench


def test_step_seconds_are_differences_of_elapsed_after_the_skipped_steps(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    elapsed = [1.0, 3.0, 3.5, 4.5, 6.0]
    log.write_text("".join(json.dumps({"step": i + 1, "elapsed_s": e}) + "\n" for i, e in enumerate(elapsed)))
    assert bench.step_seconds(log, 0) == [2.0, 0.5, 1.0, 1.5]
    assert bench.step_seconds(log, 2) == [1.0, 1.5]
    with pytest.raises(ValueError, match="too few"):
        bench.step_seconds(log, 4)


@pytest.mark.slow
def test_a_tiny_run_measures_both_sides_and_writes_its_report(tmp_path: Path) -> None:
    result = bench.main(
        [
            "--presets",
            "tiny",
            "--steps",
            "6",
            "--skip",
            "1",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    (row,) = result["presets"].values()
    assert row["preset"] == "tiny" and row["threads"] == 1
    for side in ("workers_0", "workers_1"):
        assert row[side]["steps"] == 4 and row[side]["median_s"] > 0
        assert len(row[side]["run_medians_s"]) == 1
    assert row["speedup"] == pytest.approx(row["workers_0"]["median_s"] / row["workers_1"]["median_s"])
    assert "| tiny | 1 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0
