"""The export benchmark end to end on tiny inputs: a tiny model, two examples per task, fp32 ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.export import run
from benchmarks.export.report import readme_table, summary_table

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig


@pytest.mark.slow
def test_export_benchmark_measures_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    args = ["--model", str(model), "--formats", "onnx", "--quantizations", "fp32", "--examples", "2"]
    args += ["--latency-examples", "1", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    assert run.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["rows"]
    assert (row["format"], row["platform"], row["quantization"], row["executed"]) == (
        "onnx",
        "android",
        "fp32",
        True,
    )
    export = json.loads((tmp_path / "work" / "export-onnx-fp32.json").read_text())
    assert row["bundle_bytes"] == sum(f["bytes"] for f in export["manifest"]["files"]) > 0
    assert row["export_s"] > 0 and row["export_rss_peak_bytes"] > row["rss_model_bytes"] > 0
    assert {t["n"] for t in row["tasks"].values()} == {2}
    for task in row["tasks"].values():
        assert task["equal"] == (task["exported"] == task["pytorch"])
        assert task["latency_ratio"] == pytest.approx(task["latency_ms"] / task["pytorch_latency_ms"])
    assert results["examples_per_task"] == 2
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert summary_table(results)[2] in markdown
    assert (tmp_path / "out" / "results.png").stat().st_size > 10_000

    # a second run keeps the measured cells instead of measuring again
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("*.json")}
    assert run.main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("*.json")} == kept


def test_unavailable_formats_are_reported_not_measured() -> None:
    formats, skipped = run.available_formats(["onnx", "webgpu"])
    assert formats == ["onnx"]
    assert "unknown format 'webgpu'" in skipped["webgpu"]
    assert run.platform_for("coreml") == "ios" and run.platform_for("onnx") == "android"


def test_the_readmes_formats_table_is_the_measured_one() -> None:
    """README's formats x precisions table is rendered from the committed results.json."""
    results = json.loads((run.OUT / "results.json").read_text())
    readme = (run.REPO / "README.md").read_text()
    for line in readme_table(results):
        assert line in readme, line


def test_a_cell_past_its_timeout_is_stopped_and_recorded(tmp_path: Path) -> None:
    """One slow cell must not sink the run: it is stopped (its process group killed) and kept
    as an error row; nothing is left running."""
    cells = run.Cells(tmp_path, "default", latency_examples=1, timeouts={"export": 0.5})
    bundle = tmp_path / "bundle"
    args = ["export", "--format", "onnx", "--platform", "android", "--quantization", "fp32"]
    result = cells.run("export-onnx-fp32", [*args, "--bundle", str(bundle)])
    assert result == {"error": "timed out: stopped after 0.5 s (the cell timeout)"}
    assert not (tmp_path / "export-onnx-fp32.json").exists()  # a rerun measures it again
    assert not bundle.exists()


def test_readme_table_option_prints_the_committed_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--readme-table"]) == 0
    results = json.loads((run.OUT / "results.json").read_text())
    assert capsys.readouterr().out.splitlines() == readme_table(results)


def test_cells_kept_from_another_model_are_measured_again(tmp_path: Path) -> None:
    """A kept cell is reused only for the model it was measured on: re-quantizing a variant changes
    its manifest (the weights' hashes), and cells kept from before are discarded."""
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    work = tmp_path / "work"
    before = run.model_fingerprint(str(model))
    assert run.keep_cells_of(work, before) is False  # nothing kept yet
    (work / "export-onnx-int2.json").write_text("{}")
    assert run.keep_cells_of(work, before) is False and (work / "export-onnx-int2.json").exists()
    manifest = model / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # any change, as new weights' hashes would make
    after = run.model_fingerprint(str(model))
    assert after != before
    assert run.keep_cells_of(work, after) is True and not (work / "export-onnx-int2.json").exists()
    (work / "cell.json").write_text("{}")
    (work / "model.json").unlink()  # a work directory from before the stamp: not this model's
    assert run.keep_cells_of(work, after) is True
