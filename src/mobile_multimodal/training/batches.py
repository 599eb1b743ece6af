"""Training batches, generated on the fly and fully determined by (seed, step).

Because batch `step` is a pure function of the seed and the step number, a resumed run sees
exactly the batches an uninterrupted run would have seen. A scene the generator draws that is
one of the held-out splits' (``data.splits.held_out_scenes``: the evaluation's and the serving
canary's) is drawn again, so no held-out scene is trained on; OCR lines use the training words,
the held-out splits other words. Quantization calibration (GPTQ, QAT) uses these batches too.
What the scenes and lines look like is the model's data version (``data.training_data``).

Example::

    builder = BatchBuilder(Tokenizer.default(), seed=0, sizes=BatchSizes(), easy_vqa=None)
    batch = builder.build(step=0)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from mobile_multimodal.data import scenes, text_images, training_data
from mobile_multimodal.data.easyvqa import EasyVQASplit
from mobile_multimodal.data.splits import held_out_scenes
from mobile_multimodal.model.preprocess import scene_tensor, text_line_tensor
from mobile_multimodal.model.tokenizer import Tokenizer

TRAIN_NAMESPACE = 0
HARD_NEGATIVE_RATE = 0.5


@dataclass(frozen=True)
class BatchSizes:
    caption: int = 32
    scene_vqa: int = 24
    easy_vqa: int = 12
    ocr: int = 48


@dataclass
class Batch:
    images: torch.Tensor  # (Ns, 3, 64, 64): caption scenes, then scene-VQA, then easy-VQA
    seq_ids: torch.Tensor  # (Ns, T) prompt + target + eos, right-padded
    seq_valid: torch.Tensor  # (Ns, T) bool
    target_mask: torch.Tensor  # (Ns, T) bool: positions whose *next* token is a target
    n_caption: int
    question_ids: torch.Tensor  # (Ns, Tq) the question of each VQA row (none for caption rows)
    question_valid: torch.Tensor
    caption_ids: torch.Tensor  # (Nc, Tc) for the retrieval text encoder
    caption_valid: torch.Tensor
    ocr_images: torch.Tensor  # (No, 3, 32, 256)
    ocr_targets: torch.Tensor  # concatenated CTC targets
    ocr_target_lengths: torch.Tensor

    def to(self, device: str) -> Batch:
        changes = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **changes)


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    valid = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        valid[i, : len(s)] = True
    return ids, valid


class BatchBuilder:
    def __init__(
        self,
        tokenizer: Tokenizer,
        seed: int,
        sizes: BatchSizes,
        easy_vqa: EasyVQASplit | None,
        scene_size: int = 64,
        ocr_height: int = 32,
        ocr_width: int = 256,
        *,
        data_version: str | None = None,
        ocr_fit: str = "squeeze",
    ) -> None:
        self.tok = tokenizer
        self.seed = seed
        self.sizes = sizes
        self.easy_vqa = easy_vqa
        self.scene_size, self.ocr_height, self.ocr_width = scene_size, ocr_height, ocr_width
        self.ocr_fit = ocr_fit
        self.data = training_data.data_version(data_version)  # how scenes and lines are drawn
        self.words = text_images.train_words()
        self.held_out = held_out_scenes()

    def _sequence(self, task: str, question: str | None, target: str) -> tuple[list[int], int]:
        prompt = self.tok.prompt(task, question)
        return [*prompt, *self.tok.encode(target), self.tok.eos_id], len(prompt)

    def _training_scene(self, scene: scenes.Scene, rng: np.random.Generator) -> scenes.Scene:
        """``scene``, or, while it is a held-out one, a fresh draw (so the held-out sets stay unseen)."""
        while scene in self.held_out:
            scene = scenes.sample_scene(rng)
        return scene

    def build(self, step: int) -> Batch:
        rng = np.random.default_rng([TRAIN_NAMESPACE, self.seed, step])
        images, seqs, prompt_lens, caption_texts = [], [], [], []
        questions: list[list[int]] = []
        scene = None
        for i in range(self.sizes.caption):
            # every odd row is, half the time, a one-attribute change of the row before it: a
            # hard negative for the contrastive loss
            if i % 2 == 1 and scene is not None and rng.random() < HARD_NEGATIVE_RATE:
                scene = self._training_scene(scenes.perturb_scene(scene, rng), rng)
            else:
                scene = self._training_scene(scenes.sample_scene(rng), rng)
            scene, image = self.data.scene_image(scene, rng)  # captions follow the drawing
            variants = scenes.caption_variants(scene)
            # the canonical phrasing half the time, a paraphrase otherwise
            caption = variants[0] if rng.random() < 0.5 else variants[int(rng.integers(1, len(variants)))]
            images.append(scene_tensor(image, self.scene_size))
            seq, plen = self._sequence("captioning", None, caption)
            seqs.append(seq)
            questions.append([])
            prompt_lens.append(plen)
            caption_texts.append(variants[0] if rng.random() < 0.5 else caption)
        for _ in range(self.sizes.scene_vqa):
            scene = self._training_scene(scenes.sample_scene(rng), rng)
            scene, image = self.data.scene_image(scene, rng)
            q, a = scenes.sample_question(scene, rng)
            images.append(scene_tensor(image, self.scene_size))
            seq, plen = self._sequence("vqa", q, a)
            seqs.append(seq)
            questions.append(self.tok.encode(q))
            prompt_lens.append(plen)
        if self.easy_vqa is not None and self.sizes.easy_vqa:
            for qi in rng.integers(len(self.easy_vqa.questions), size=self.sizes.easy_vqa):
                img = self.easy_vqa.images[self.easy_vqa.image_ids[qi]]
                images.append(scene_tensor(img, self.scene_size))
                seq, plen = self._sequence("vqa", self.easy_vqa.questions[qi], self.easy_vqa.answers[qi])
                seqs.append(seq)
                questions.append(self.tok.encode(self.easy_vqa.questions[qi]))
                prompt_lens.append(plen)
        seq_ids, seq_valid = _pad(seqs, self.tok.pad_id)
        target_mask = torch.zeros_like(seq_valid)
        for i, (s, plen) in enumerate(zip(seqs, prompt_lens, strict=True)):
            target_mask[i, plen - 1 : len(s) - 1] = True  # predict target tokens and <eos>
        caption_ids, caption_valid = _pad([self.tok.encode(c) for c in caption_texts], self.tok.pad_id)
        question_ids, question_valid = _pad(questions, self.tok.pad_id)

        ocr_imgs, targets, lengths = [], [], []
        for _ in range(self.sizes.ocr):
            line = self.data.text_line(rng, self.words)
            ocr_imgs.append(text_line_tensor(line.image, self.ocr_height, self.ocr_width, self.ocr_fit))
            t = self.tok.encode_chars(line.text)
            targets.extend(t)
            lengths.append(len(t))
        return Batch(
            images=torch.stack(images),
            seq_ids=seq_ids,
            seq_valid=seq_valid,
            target_mask=target_mask,
            n_caption=self.sizes.caption,
            question_ids=question_ids,
            question_valid=question_valid,
            caption_ids=caption_ids,
            caption_valid=caption_valid,
            ocr_images=torch.stack(ocr_imgs),
            ocr_targets=torch.tensor(targets, dtype=torch.long),
            ocr_target_lengths=torch.tensor(lengths, dtype=torch.long),
        )
