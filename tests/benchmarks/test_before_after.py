"""The before/after benchmark serves each code base from its own tree, and reports ratios."""

from __future__ import annotations

from pathlib import Path

from benchmarks.before_after.run import REPO, _ratios, export_tree, imported_from, write_markdown


def test_the_before_tree_is_imported_from_its_own_archive(tmp_path: Path) -> None:
    tree = export_tree("HEAD", tmp_path / "before")
    assert (tree / "src" / "mobile_multimodal" / "cli.py").is_file()
    assert (tree / "benchmarks" / "telemetry" / "micro.py").is_file()
    origin = imported_from(tree / "src")
    assert origin.is_relative_to((tree / "src").resolve()), origin
    assert imported_from(REPO / "src").is_relative_to((REPO / "src").resolve())


def test_ratios_are_after_over_before_per_round() -> None:
    before = [{"rps": 100.0, "p50_ms": 10.0, "p99_ms": 20.0}, {"rps": 50.0, "p50_ms": 20.0, "p99_ms": 40.0}]
    after = [{"rps": 110.0, "p50_ms": 9.0, "p99_ms": 20.0}, {"rps": 60.0, "p50_ms": 20.0, "p99_ms": 30.0}]
    r = _ratios(before, after)
    assert r["rps"]["min"] == 1.1 and r["rps"]["max"] == 1.2
    assert abs(r["rps"]["ratio"] - 1.15) < 1e-9  # median of the per-round ratios
    assert r["p50_ms"]["ratio"] == 0.95 and r["p99_ms"]["ratio"] == 0.875
    assert r["rps"]["before"] == 75.0 and r["rps"]["after"] == 85.0


def test_markdown_names_both_revisions_and_every_cell(tmp_path: Path) -> None:
    one = {"rps": 100.0, "p50_ms": 10.0, "p99_ms": 20.0}
    result = {
        "before": "abc1234",
        "after": "def5678",
        "model": "default",
        "quantization": "int2",
        "rounds": 1,
        "duration_s": 2,
        "machine": {"cpu": "cpu", "cores": 2},
        "load_average": "0.10, 0.10, 0.10",
        "command": "python -m benchmarks.before_after.run --before abc1234",
        "serving": {"captioning@1": _ratios([one], [one]), "ocr@32": _ratios([one], [one])},
        "telemetry": {
            "added_us": {"before": 30.0, "after": 33.0},
            "runs_us": {"after": [33.0]},
            "ratio": 1.1,
        },
    }
    path = tmp_path / "results.md"
    write_markdown(result, path)
    text = path.read_text()
    assert "`abc1234`" in text and "`def5678`" in text
    assert "| captioning | 1 |" in text and "| ocr | 32 |" in text
    assert "**1.100**" in text
