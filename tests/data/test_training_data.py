"""Data versions of the training generator: V1 is the first generator untouched (the held-out
splits, the canary and the user-style split never depend on the version), and V2's user-style
drawings are what they claim: dark and other backgrounds, canvases and objects of many sizes,
anywhere in their cell, JPEG, slight rotation; mixed-case ASCII lines up to 32 characters."""

from __future__ import annotations

import string

import numpy as np
import pytest

from mobile_multimodal.data import scene_styles, scenes, text_images, text_styles, training_data
from mobile_multimodal.data.splits import DATA_VERSION, load_eval_split
from mobile_multimodal.data.user_style import load_user_split
from mobile_multimodal.data.vocabulary import CHARSETS, COLORS, OCR_CHARSET_ASCII, POSITIONS
from mobile_multimodal.model import Tokenizer
from mobile_multimodal.training.batches import BatchBuilder, BatchSizes
from mobile_multimodal.training.canary_set import CanarySet


def _forbid_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the user-style training drawings were used")

    monkeypatch.setattr(scene_styles, "styled_scene", refuse)
    monkeypatch.setattr(text_styles, "sample_styled_line", refuse)


def test_v1_is_the_bundled_models_version_and_draws_no_random_number() -> None:
    assert training_data.V1 == DATA_VERSION  # the manifests of the bundled model say this one
    assert training_data.data_version(None).name == training_data.V1  # manifests without one
    v1 = training_data.data_version(training_data.V1)
    rng = np.random.default_rng(3)
    scene = scenes.sample_scene(rng)
    state = rng.bit_generator.state
    drawn, image = v1.scene_image(scene, rng)
    assert rng.bit_generator.state == state  # the batches' random stream is the old one
    assert drawn == scene and image.tobytes() == scenes.render_scene(scene).tobytes()


def test_held_out_splits_canary_and_v1_batches_never_touch_the_new_drawings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forbid_styles(monkeypatch)
    for split in ("captioning", "vqa", "retrieval", "ocr", "ocr_unseen_fonts"):
        assert len(load_eval_split(split, 3)) == 3
    for task in ("user_captioning", "user_ocr_mixed"):
        assert len(load_user_split(task, 2)) == 2
    assert CanarySet.build(2).examples["captioning"]
    builder = BatchBuilder(Tokenizer.default(), seed=0, sizes=BatchSizes(4, 4, 0, 6), easy_vqa=None)
    assert builder.data.name == training_data.V1
    assert builder.build(0).ocr_images.shape == (6, 3, 32, 256)


def test_unknown_data_version_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown data version"):
        training_data.data_version("procedural-v9")


def test_v2_batches_mix_user_style_drawings_into_the_old_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"scene": 0, "line": 0}
    real_scene, real_line = scene_styles.styled_scene, text_styles.sample_styled_line

    def scene(*a: object) -> scene_styles.Drawing:
        calls["scene"] += 1
        return real_scene(*a)  # type: ignore[arg-type]

    def line(*a: object) -> text_images.TextSample:
        calls["line"] += 1
        return real_line(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(scene_styles, "styled_scene", scene)
    monkeypatch.setattr(text_styles, "sample_styled_line", line)
    tok = Tokenizer.default(CHARSETS["ascii"])
    builder = BatchBuilder(
        tok,
        0,
        BatchSizes(16, 16, 0, 24),
        None,
        64,
        32,
        512,
        data_version=training_data.V2,
        ocr_fit="letterbox",
    )
    batch = builder.build(0)
    assert batch.images.shape == (32, 3, 64, 64) and batch.ocr_images.shape == (24, 3, 32, 512)
    assert 4 <= calls["scene"] <= 28 and 6 <= calls["line"] <= 23  # a mix, not all of one kind
    # the ASCII tokenizer keeps the lines' case: some target is a capital letter
    capitals = {tok.charset.index(c) + 1 for c in string.ascii_uppercase}
    assert capitals & set(batch.ocr_targets.tolist())
    again = BatchBuilder(
        tok,
        0,
        BatchSizes(16, 16, 0, 24),
        None,
        64,
        32,
        512,
        data_version=training_data.V2,
        ocr_fit="letterbox",
    ).build(0)
    assert bool((again.images == batch.images).all()) and bool((again.ocr_targets == batch.ocr_targets).all())


def test_v3_draws_its_user_style_lines_in_the_extra_fonts_too_and_v2_never() -> None:
    def fonts(version: str) -> set[str]:
        v, rng = training_data.data_version(version), np.random.default_rng(5)
        return {v.text_line(rng, text_images.train_words()).font for _ in range(400)}

    v2, v3 = fonts(training_data.V2), fonts(training_data.V3)
    extra = set(text_images.EXTRA_TRAIN_FONTS)
    assert v2 <= set(text_images.TRAIN_FONTS)
    assert len(v3 & extra) >= 15 and v3 - extra <= set(text_images.TRAIN_FONTS)
    v3_data = training_data.data_version(training_data.V3)
    assert (v3_data.styled_scene_rate, v3_data.styled_line_rate) == (0.5, 0.65)  # V2's otherwise


def test_styled_scenes_cover_backgrounds_sizes_positions_jpeg_and_rotation() -> None:
    rng = np.random.default_rng(0)
    drawings = [scene_styles.styled_scene(scenes.sample_scene(rng), rng) for _ in range(200)]
    kinds = [d.background for d in drawings]
    assert set(kinds) == set(scene_styles.BACKGROUNDS)
    dark = [d for d in drawings if np.asarray(d.image).mean() < 80]
    assert len(dark) >= 30  # dark canvases, where the bundled model fails, are common
    sides = [side for d in drawings for side in d.canvas]
    assert min(sides) < 70 and max(sides) > 400
    extents = []
    for d in drawings:
        w, h = d.canvas
        for obj, (cx, cy, e) in zip(d.scene.objects, d.boxes, strict=True):
            rel = e / min(w, h)
            lo, hi = scene_styles.EXTENT[obj.size]
            assert lo <= rel <= hi, (obj.size, rel)
            extents.append(rel)
            cell = POSITIONS.index(obj.position)  # the centre lies in the cell the caption names
            assert cell % 3 == min(2, int(cx / (w / 3))) and cell // 3 == min(2, int(cy / (h / 3)))
            assert e / 2 <= cx <= w - e / 2 and e / 2 <= cy <= h - e / 2  # wholly on the canvas
            assert obj.color in COLORS
    assert min(extents) < 0.07 and max(extents) > 0.45
    qualities = {d.jpeg_quality for d in drawings}
    assert 0 in qualities and len(qualities - {0}) >= 20  # JPEG at many qualities, and none
    angles = [d.rotation_deg for d in drawings]
    assert max(abs(a) for a in angles) <= scene_styles.MAX_ROTATION_DEG and max(angles) > 2 > -2 > min(angles)


def test_styled_scene_objects_stand_out_from_their_background() -> None:
    """On a dark canvas a black object is recoloured, and the scene (so the caption) says so."""
    rng = np.random.default_rng(1)
    recoloured = 0
    for _ in range(150):
        scene = scenes.sample_scene(rng)
        d = scene_styles.styled_scene(scene, rng)
        pixels = np.asarray(d.image.convert("RGB"), np.float32)
        for before, after in zip(scene.objects, d.scene.objects, strict=True):
            recoloured += before.color != after.color
            assert (before.shape, before.size, before.position) == (after.shape, after.size, after.position)
        if d.background == "dark" and np.median(pixels) < 60:  # black would vanish there
            assert all(o.color != "black" for o in d.scene.objects)
        assert pixels.std() > 5  # something is drawn
    assert recoloured > 0


def test_styled_lines_are_mixed_case_ascii_up_to_32_chars_in_many_looks() -> None:
    rng = np.random.default_rng(0)
    words = text_images.train_words()
    lines = [text_styles.sample_styled_line(rng, text_images.TRAIN_FONTS, words) for _ in range(300)]
    texts = [line.text for line in lines]
    assert all(1 <= len(t) <= 32 and set(t) <= set(OCR_CHARSET_ASCII) and t == t.strip() for t in texts)
    assert max(len(t) for t in texts) >= 28
    joined = "".join(texts)
    assert any(c.isupper() for c in joined) and any(c.islower() for c in joined)
    assert any(c.isdigit() for c in joined) and len(set(joined) & set(string.punctuation)) >= 20
    assert sum(t[:1].isupper() and t[1:].islower() for t in texts) >= 20  # "Capitalised" words
    heights = [line.image.height for line in lines]
    assert min(heights) < 20 and max(heights) > 70  # 10-64 px fonts and their paddings
    dark = sum(float(np.median(np.asarray(line.image.convert("L")))) < 110 for line in lines)
    assert 0.3 < dark / len(lines) < 0.7  # light on dark about as often as dark on light


def test_styled_lines_never_use_a_held_out_word_in_any_case() -> None:
    held = set(text_images.held_out_words())
    rng = np.random.default_rng(2)
    words = text_images.train_words()
    for _ in range(400):
        text = text_styles.sample_styled_text(rng, words)
        for token in text.replace("-", " ").split():
            core = token.strip(string.punctuation)
            # (a random string's token could spell a short word by chance: words of 3+ letters)
            if len(core) >= 3 and core.isalpha():
                assert core.lower() not in held, text
