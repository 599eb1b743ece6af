"""The OCR reader's language model: fitted on training text only, in the reader's charset, and
what it does on the bundled model's real reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.data.text_images import held_out_words
from mobile_multimodal.data.vocabulary import OCR_MAX_CHARS_ASCII
from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, bundled_model_dir
from mobile_multimodal.model.ctc_lm import LM_FILE, MANIFEST_KEY, LmReader, lm_file_bytes
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.model.preprocess import text_line_tensor
from mobile_multimodal.model.tokenizer import Tokenizer
from mobile_multimodal.training import ocr_lm
from mobile_multimodal.training.evaluate import evaluate_model
from mobile_multimodal.training.ocr_lm import (
    build_ocr_reader,
    cached_ocr_reader,
    describe_reader,
    ship_ocr_lm,
    training_texts,
)

ASCII = Tokenizer(words=[], charset=" " + "".join(chr(c) for c in range(33, 127)))


def test_the_text_is_in_the_readers_charset(bundled_model: MobileMultiModalLLM) -> None:
    lowercase = training_texts(bundled_model.tokenizer, styled_lines=2000)
    charset = set(bundled_model.tokenizer.charset)
    assert all(set(t) <= charset and t == " ".join(t.split()) for t in lowercase)
    assert any(c.isdigit() for t in lowercase for c in t)  # numbers survive the lower-casing
    mixed = training_texts(ASCII, styled_lines=2000)
    assert any(c.isupper() for t in mixed for c in t) and any(c in ".,:$" for t in mixed for c in t)


def test_no_held_out_word_is_in_the_text() -> None:
    tokens = set()
    for text in training_texts(ASCII, styled_lines=5000):
        words = re.findall(r"[a-z]+", text.lower())
        # a line cut at 32 characters may end in a training word's prefix that is a held-out word
        # ("showmanship" -> "showman"): training's own lines do, the model counts what they hold
        tokens.update(words[:-1] if len(text) == OCR_MAX_CHARS_ASCII else words)
    held_out = {w for w in held_out_words() if len(w) >= 4}  # a random string may spell a short one
    assert held_out and not tokens & held_out


def test_the_text_spells_everyday_conventions_in_a_third_of_the_styled_lines_count() -> None:
    words = training_texts(ASCII, styled_lines=0)  # the training words alone
    texts = training_texts(ASCII, styled_lines=600)
    assert ocr_lm.everyday_lines(600) == 200 and len(texts) == len(words) + 600 + 200
    assert sum(bool(re.fullmatch(r"\d{1,2}(:\d\d)? (AM|PM)", t)) for t in texts[-200:]) >= 5
    assert any(re.fullmatch(r"(Hello|Hi|Dear|Thanks), [A-Z][a-z]+[!,.]", t) for t in texts[-200:])


def test_the_text_is_the_same_every_time() -> None:
    assert training_texts(ASCII, styled_lines=300) == training_texts(ASCII, styled_lines=300)


def test_without_the_language_model_the_beam_reads_the_bundled_readers_lines_as_greedy_does(
    bundled_model: MobileMultiModalLLM,
) -> None:
    cfg, tok = bundled_model.config, bundled_model.tokenizer
    lines = [e.image for e in load_eval_split("ocr", 60)]
    batch = torch.stack([text_line_tensor(i, cfg.ocr_height, cfg.ocr_width, cfg.ocr_fit) for i in lines])
    with torch.inference_mode():
        log_probs = bundled_model.network.read_text(batch).float().log_softmax(-1).numpy()
    reader = LmReader(build_ocr_reader(tok, styled_lines=100).lm, alpha=0.0, beta=0.0)
    beam = [reader.read(row, tok.charset) for row in log_probs]
    greedy = [tok.decode_ctc(row.argmax(-1).tolist()) for row in log_probs]
    # the beam sums every frame path of a text, greedy follows the best one: on a confident
    # reader they agree (here on all but a line or two)
    assert np.mean([a == b for a, b in zip(beam, greedy, strict=True)]) >= 0.95


def test_eval_reads_the_bundled_models_lines_better_with_the_language_model_it_ships() -> None:
    plain = evaluate_model("default", tasks=("ocr_unseen_fonts",), limit=120, ocr_decoding="greedy")
    with_lm = evaluate_model("default", tasks=("ocr_unseen_fonts",), limit=120)  # auto: the shipped one
    assert "ocr_decoding" not in plain
    assert with_lm["ocr_decoding"]["decode"] == "ctc_prefix_beam_lm" and with_lm["ocr_decoding"]["shipped"]
    got, before = with_lm["tasks"]["ocr_unseen_fonts"], plain["tasks"]["ocr_unseen_fonts"]
    assert got["n"] == before["n"] == 120
    assert got["word_accuracy"] > before["word_accuracy"]


def test_the_fitted_model_is_cached_and_a_broken_cache_is_fitted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cached_ocr_reader(ASCII, tmp_path, styled_lines=200)
    (cached,) = tmp_path.glob("*.json.gz")

    def no_fit(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("fitted again although the cache holds the model")

    monkeypatch.setattr(ocr_lm, "build_ocr_reader", no_fit)
    again = cached_ocr_reader(ASCII, tmp_path, styled_lines=200)
    assert again.lm.counts == first.lm.counts and (again.alpha, again.beta) == (first.alpha, first.beta)
    monkeypatch.undo()
    whole = cached.read_bytes()
    for broken in (b"not gzip", whole[: len(whole) // 2], whole[:10] + bytes(len(whole) - 10)):
        cached.write_bytes(broken)  # not gzip, cut short, corrupt inside
        heard: list[str] = []
        refit = cached_ocr_reader(ASCII, tmp_path, log=heard.append, styled_lines=200)
        assert refit.lm.counts == first.lm.counts and "unreadable" in heard[0]
    assert cached_ocr_reader(ASCII, tmp_path, styled_lines=200).lm.counts == first.lm.counts  # replaced
    assert len(list(tmp_path.iterdir())) == 1  # no temporary file left behind


def test_mobile_mm_eval_ocr_decoding_as_the_readme_shows_it() -> None:
    import json

    from typer.testing import CliRunner

    from mobile_multimodal.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--tasks", "ocr", "--limit", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ocr_decoding"]["alpha"] == 0.3 and report["tasks"]["ocr"]["n"] == 8
    greedy = runner.invoke(
        app, ["eval", "--tasks", "ocr", "--limit", "8", "--json", "--ocr-decoding", "greedy"]
    )
    assert greedy.exit_code == 0, greedy.output
    assert "ocr_decoding" not in json.loads(greedy.stdout)
    text = runner.invoke(app, ["eval", "--tasks", "ocr", "--limit", "4"])  # the table says how it read
    assert (
        text.exit_code == 0 and "OCR read with a character language model: ctc_prefix_beam_lm" in text.stdout
    )
    plain = runner.invoke(app, ["eval", "--tasks", "ocr", "--limit", "4", "--ocr-decoding", "greedy"])
    assert plain.exit_code == 0 and "OCR read greedily" in plain.stdout
    wrong = runner.invoke(app, ["eval", "--tasks", "ocr", "--ocr-decoding", "beam"])
    assert wrong.exit_code == 2 and "auto, greedy, lm" in wrong.output


def test_the_bundled_model_ships_the_language_model_its_recipe_fits(
    bundled_model: MobileMultiModalLLM,
) -> None:
    # reproducible: fitting again (what `mobile-mm train` does) writes the same bytes, so a
    # changed generator or recipe that was not shipped fails here
    fitted = build_ocr_reader(bundled_model.tokenizer)
    root = bundled_model_dir()
    shipped = (root / LM_FILE).read_bytes()
    assert lm_file_bytes(fitted.lm) == shipped
    assert bundled_model.manifest[MANIFEST_KEY] == describe_reader(fitted)
    for quantization in ("int8", "int4", "int2"):  # each variant ships its parent's, byte for byte
        variant = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
        assert (root / quantization / LM_FILE).read_bytes() == shipped
        assert variant.ocr_reader is not None and variant.manifest[MANIFEST_KEY] == describe_reader(fitted)
    assert bundled_model.ocr_reader is not None and bundled_model.ocr_reader.lm.counts == fitted.lm.counts
    # the file is not the weights: the model's size is its weights' (the size targets' figure)
    assert bundled_model.size_bytes() == (root / "model.safetensors").stat().st_size


def test_a_shipped_language_model_is_verified_and_described_or_refused(tmp_path: Path) -> None:
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)
    directory = model.save(tmp_path / "model")
    reader = build_ocr_reader(model.tokenizer, styled_lines=200)
    manifest = ship_ocr_lm(directory, reader)
    assert (
        manifest["files"][-1]["path"] == LM_FILE
        and oct((directory / LM_FILE).stat().st_mode & 0o777) == "0o644"
    )
    loaded = MobileMultiModalLLM.from_pretrained(directory)
    assert loaded.ocr_reader is not None and loaded.ocr_reader.lm.counts == reader.lm.counts
    # a model saved from it (a fine-tune, a copy) ships the language model it reads with, the
    # recipe's description kept; one saved reading greedily claims none
    copy = loaded.save(tmp_path / "copy")
    assert (copy / LM_FILE).read_bytes() == (directory / LM_FILE).read_bytes()
    assert json.loads((copy / "manifest.json").read_text())[MANIFEST_KEY] == manifest[MANIFEST_KEY]
    assert MobileMultiModalLLM.from_pretrained(copy).ocr_reader is not None
    loaded.ocr_reader = None
    greedy = loaded.save(tmp_path / "greedy")
    assert MobileMultiModalLLM.from_pretrained(greedy).ocr_reader is None and not (greedy / LM_FILE).exists()
    assert MANIFEST_KEY not in json.loads((greedy / "manifest.json").read_text())

    good = (directory / LM_FILE).read_bytes()
    (directory / LM_FILE).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # tampered: its hash
    with pytest.raises(ModelLoadError) as tampered:
        MobileMultiModalLLM.from_pretrained(directory)
    assert tampered.value.code == "MODEL_INTEGRITY_FAILED"
    (directory / LM_FILE).write_bytes(good)

    def refused(section: dict[str, object], files: list[dict[str, object]] | None = None) -> str:
        bad = {**manifest, MANIFEST_KEY: section, "files": manifest["files"] if files is None else files}
        (directory / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ModelLoadError) as error:
            MobileMultiModalLLM.from_pretrained(directory)
        return f"{error.value.code}: {error.value}"

    section = manifest[MANIFEST_KEY]
    assert "unknown OCR decoding" in refused({**section, "decode": "ctc_beam_v2"})
    assert "lacks ['per_frame']" in refused({k: v for k, v in section.items() if k != "per_frame"})
    assert "not among the manifest's files" in refused(section, files=manifest["files"][:1])
    assert refused(section, files=manifest["files"][:1]).startswith("MODEL_MANIFEST_INVALID")


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_reader(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory would go")
    heard: list[str] = []
    reader = cached_ocr_reader(ASCII, blocked, log=heard.append, styled_lines=100)
    assert reader.lm.counts and "could not cache" in heard[0]
