"""The OCR baseline is real: rapidocr reads clearly rendered words, offline, and the benchmark
scores it with our metrics on our eval splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.ocr_baseline import run as ocr_baseline
from PIL import Image, ImageDraw, ImageFont

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core
WORDS = ["hello", "Mobile", "quantize", "river", "Zebra42", "window", "garden", "the quick fox"]

pytestmark = pytest.mark.skipif(not DEJAVU.exists(), reason="needs Debian fonts-dejavu-core")


def render(text: str, size: int = 28) -> Image.Image:
    font = ImageFont.truetype(str(DEJAVU), size)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    image = Image.new("RGB", (right - left + 16, bottom - top + 16), "white")
    ImageDraw.Draw(image).text((8 - left, 8 - top), text, font=font, fill="black")
    return image


@pytest.fixture(scope="module")
def rec_baseline() -> ocr_baseline.RapidOcrBaseline:
    return ocr_baseline.RapidOcrBaseline("rec", threads=1)


def test_model_files_ship_in_the_wheel() -> None:
    files = ocr_baseline.bundled_model_files()
    assert set(files) == {"det", "cls", "rec"}
    for path in files.values():
        assert path.suffix == ".onnx"
        assert path.stat().st_size > 100_000  # real weights, not a Git LFS pointer or placeholder


def test_recognizer_reads_clear_words(rec_baseline: ocr_baseline.RapidOcrBaseline) -> None:
    reads = [rec_baseline.read(render(w)) for w in WORDS]
    correct = sum(r == w for r, w in zip(reads, WORDS, strict=True))
    assert correct >= len(WORDS) - 1, list(zip(WORDS, reads, strict=True))


def test_full_pipeline_reads_clear_words() -> None:
    baseline = ocr_baseline.RapidOcrBaseline("det+cls+rec", threads=1)
    reads = [baseline.read(render(w)) for w in WORDS]
    correct = sum(r == w for r, w in zip(reads, WORDS, strict=True))
    assert correct >= len(WORDS) - 2, list(zip(WORDS, reads, strict=True))


def test_runs_offline_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    # rapidocr downloads through requests.get when a model file is missing: make any such call fail
    import rapidocr.utils.download_file as download_file

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"rapidocr tried to download {args}")

    monkeypatch.setattr(download_file.requests, "get", no_network)
    for mode in ocr_baseline.MODES:
        assert ocr_baseline.RapidOcrBaseline(mode, threads=1).read(render("offline")) == "offline"


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        ocr_baseline.RapidOcrBaseline("det-only")


def test_evaluate_scores_with_our_metrics(rec_baseline: ocr_baseline.RapidOcrBaseline) -> None:
    images = [render(w) for w in ("apple", "Banana", "cherry")]
    result = ocr_baseline.evaluate(rec_baseline, images, ["apple", "banana", "cherry"])
    assert result.n == 3
    # "Banana" is read with its capital: wrong case-sensitively, right once case is folded
    assert result.word_accuracy == pytest.approx(2 / 3)
    assert result.cer == pytest.approx(1 / 17)
    assert result.word_accuracy_case_folded == 1.0
    assert result.cer_case_folded == 0.0
    assert result.misreads == []
    assert result.images_per_s > 0
    wrong = ocr_baseline.evaluate(rec_baseline, images, ["apples", "banana", "berry"])
    assert wrong.word_accuracy_case_folded == pytest.approx(1 / 3)
    assert [m["target"] for m in wrong.misreads] == ["apples", "berry"]


def test_run_writes_results_for_both_splits(tmp_path: Path) -> None:
    results = ocr_baseline.run(n=4, out_dir=tmp_path, threads=1, modes=["rec"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved["splits"]) == {"ocr", "ocr_unseen_fonts"}
    for split in saved["splits"].values():
        r = split["rec"]
        assert r["n"] == 4
        assert 0.0 <= r["word_accuracy_case_folded"] <= 1.0
        assert r["cer_case_folded"] >= 0.0
    markdown = (tmp_path / "results.md").read_text()
    assert "| ocr_unseen_fonts | rec | 4 |" in markdown
