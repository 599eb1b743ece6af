from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_multimodal.data.scenes import render_scene, sample_scene
from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, ModelLoadError, Tokenizer
from mobile_multimodal.model.preprocess import scene_tensor, text_line_tensor, to_pil


def _scene() -> Image.Image:
    return render_scene(sample_scene(np.random.default_rng(0)))


def test_default_config_fits_the_size_budget() -> None:
    m = MobileMultiModalLLM.from_config(ModelConfig.default())
    fp32_bytes = sum(p.numel() * 4 for p in m.network.parameters())
    assert fp32_bytes <= 35 * 1024 * 1024


def test_kv_cache_decoding_equals_full_recompute(tiny_model: MobileMultiModalLLM) -> None:
    tok = tiny_model.tokenizer
    images = torch.stack([scene_tensor(_scene()), scene_tensor(_scene().rotate(90))])
    tokens, _ = tiny_model.network.encode_images(images)
    prompts = [tok.prompt("vqa", "what color is the large circle ?"), tok.prompt("captioning")]
    dec = tiny_model.network.decoder
    cached = dec.generate(prompts, tokens, 12, tok.eos_id, tok.pad_id, use_cache=True)
    full = dec.generate(prompts, tokens, 12, tok.eos_id, tok.pad_id, use_cache=False)
    assert cached == full
    assert len(cached[0]) >= 1


def test_batched_answers_equal_one_by_one(tiny_model: MobileMultiModalLLM) -> None:
    imgs = [_scene(), _scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    qs = ["what color is the circle ?", "how many shapes are there ?"]
    batched = tiny_model.answer_questions(imgs, qs)
    single = [tiny_model.answer_question(i, q) for i, q in zip(imgs, qs, strict=True)]
    assert batched == single


def test_every_image_input_kind_gives_the_same_tensor(tmp_path: Path) -> None:
    img = _scene()
    path = tmp_path / "s.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    ref = scene_tensor(img)
    for kind in (str(path), path, buf.getvalue(), np.asarray(img)):
        assert torch.equal(scene_tensor(kind), ref)
    with pytest.raises(TypeError, match="unsupported image type"):
        to_pil(123)  # type: ignore[arg-type]


def test_text_line_is_scaled_to_height_and_padded() -> None:
    line = Image.new("RGB", (60, 20), (255, 255, 255))
    t = text_line_tensor(line)
    assert t.shape == (3, 32, 256)
    assert torch.allclose(t[:, :, 200:], torch.ones_like(t[:, :, 200:]))  # white padding


def test_save_load_round_trip_is_exact(tiny_model: MobileMultiModalLLM, tiny_model_dir: Path) -> None:
    loaded = MobileMultiModalLLM.from_pretrained(tiny_model_dir)
    for (k, a), b in zip(
        tiny_model.network.state_dict().items(), loaded.network.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    img = _scene()
    assert loaded.generate_caption(img) == tiny_model.generate_caption(img)
    info = loaded.get_model_info()
    assert info["size_bytes"] > 0 and set(info["components"]) >= {"encoder", "decoder", "ocr_head"}


def test_tampered_weights_are_refused(tiny_model: MobileMultiModalLLM, tmp_path: Path) -> None:
    d = tiny_model.save(tmp_path / "m")
    with open(d / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelLoadError) as e:
        MobileMultiModalLLM.from_pretrained(d)
    assert e.value.code == "MODEL_INTEGRITY_FAILED"


def test_missing_model_and_missing_variant_are_clear_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as e:
        MobileMultiModalLLM.from_pretrained(tmp_path / "nothing")
    assert e.value.code == "MODEL_NOT_FOUND"
    with pytest.raises(ModelLoadError) as e:
        MobileMultiModalLLM.from_pretrained(tiny_model_dir, quantization="int2")
    assert e.value.code == "QUANTIZATION_UNAVAILABLE" and "mobile-mm quantize" in str(e.value)


def test_tokenizer_round_trips_and_ctc_collapses() -> None:
    tok = Tokenizer.default()
    assert (
        tok.decode(tok.encode("a large red circle at the top left")) == "a large red circle at the top left"
    )
    ids = tok.encode_chars("hello 42")
    # CTC: repeats separated by blank are kept, adjacent repeats collapse
    frames = [ids[0], ids[1], ids[2], 0, ids[3], ids[3], ids[4], ids[5], ids[6], ids[7]]
    assert tok.decode_ctc(frames) == "hello 42"
    assert Tokenizer.from_dict(tok.to_dict()).itos == tok.itos


def test_embeddings_are_normalised(tiny_model: MobileMultiModalLLM) -> None:
    img = tiny_model.get_image_embeddings([_scene(), _scene()])
    txt = tiny_model.get_text_embeddings(["a red circle", "two shapes"])
    assert img.shape == (2, tiny_model.config.embed_dim) == txt.shape
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)


def test_word_and_position_embeddings_start_at_one_scale() -> None:
    # v1 initialised positions at N(0, 1): rows 12x the words', which drowned the question's
    # content words ("is there a red star ?" was answered like "... a gray circle ?")
    net = MobileMultiModalLLM.from_config(ModelConfig.default()).network
    with torch.no_grad():
        word = float(net.embeddings.weight.norm(dim=-1).mean())
        for pos in (net.decoder.pos.weight, net.text_encoder.pos.weight, net.encoder.question_pos):
            assert float(pos.norm(dim=-1).mean()) < 2 * word


def test_question_fusion_conditions_the_image_tokens_on_the_question(tiny_model: MobileMultiModalLLM) -> None:
    images = torch.stack([scene_tensor(_scene())] * 2)
    ids, valid = tiny_model.encode_texts(["is there a red star ?", "is there a blue circle ?"])
    fused, _ = tiny_model.network.encode_images(images, ids, valid)
    plain, _ = tiny_model.network.encode_images(images)
    assert fused.shape == plain.shape  # only the image tokens come back
    assert not torch.allclose(fused[0], fused[1])
    # padding a question does not change its encoding: padded slots are masked out
    wide_ids = torch.cat([ids, torch.full_like(ids[:, :3], tiny_model.tokenizer.pad_id)], dim=1)
    wide_valid = torch.cat([valid, torch.zeros_like(valid[:, :3])], dim=1)
    padded, _ = tiny_model.network.encode_images(images, wide_ids, wide_valid)
    assert torch.allclose(padded, fused, atol=1e-5)


def test_ocr_head_scores_two_frames_per_column(tiny_model: MobileMultiModalLLM) -> None:
    line = torch.zeros(1, 3, 32, 256)
    logp = tiny_model.network.read_text(line)
    assert logp.shape == (1, 64, tiny_model.config.ocr_classes)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 64), atol=1e-5)
