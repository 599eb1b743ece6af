"""The OCR decoding benchmark end to end on a few lines of the bundled model (the committed run
is ``python -m benchmarks.ocr_decoding.run``: 300 lines per split)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ocr_decoding import run as bench


def test_a_small_run_writes_every_report(tmp_path: Path) -> None:
    code = bench.main(
        [
            "--quantization",
            "fp32",
            "--splits",
            "ocr,user_ocr",
            "--n",
            "4",
            "--lm-lines",
            "200",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    run = results["precisions"]["fp32"]
    assert set(run["splits"]) == {"ocr", "user_ocr"} and run["styled_lines"] == 200
    for split in run["splits"].values():
        assert split["n"] == 4 and 0 <= split["lm_word_accuracy"] <= 1
        assert split["reader_ms_median"] > 0 and split["lm_ms_median"] > 0
    assert run["fit_s"] > 0 and run["cached_load_s"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| fp32 | user_ocr | 4 |" in table
    assert (tmp_path / "results.png").stat().st_size > 0


def test_accuracy_is_the_exact_line() -> None:
    assert bench._accuracy(["Item ", "ltem"], ["Item", "Item"]) == 0.5
