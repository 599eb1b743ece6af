"""Distillation from the fp32 model for quantization-aware training: our network's outputs on a
corpus batch and the losses that compare a student's with the teacher's.

``mobile_multimodal.quantization.qat.run_qat`` takes these as its ``forward`` and ``loss``
(quantization never imports training). The student matches the teacher on every output the
eval scores:

- decoder (captioning, VQA): KL(teacher ‖ student) of the next-token distributions at every
  target position;
- OCR: KL of the per-frame CTC distributions;
- retrieval: KL of the image→text and text→image similarity distributions of the batch, plus
  cosine distance of each embedding to the teacher's.

Reference: Hinton et al. 2015 (distillation).

Example::

    run_qat(net, gptq_result, plan, builder.build, opts, outputs,
            lambda t, s: distillation_loss(t, s, opts.retrieval_weight))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.training.batches import Batch


@dataclass
class Outputs:
    logits: Tensor  # (positions, V) at target positions
    ocr: Tensor  # (B, frames, C) log-probs
    image: Tensor  # (Nc, E) normalised
    text: Tensor  # (Nc, E) normalised
    scale: Tensor  # retrieval temperature


def outputs(net: MultiModalNet, batch: Batch) -> Outputs:
    """Every scored output of one batch (the same forward passes as training's loss)."""
    tokens, _ = net.encode_images(batch.images, batch.question_ids, batch.question_valid)
    logits = net.decoder(batch.seq_ids, tokens, batch.seq_valid)[:, :-1][batch.target_mask[:, :-1]]
    image = net.image_head(tokens[: batch.n_caption])
    text = net.text_embeddings(batch.caption_ids, batch.caption_valid)
    scale = net.text_encoder.logit_scale.exp().clamp(max=100.0)
    return Outputs(logits, net.read_text(batch.ocr_images), image, text, scale)


def _kl(teacher_logp: Tensor, student_logp: Tensor) -> Tensor:
    """Mean over rows of KL(teacher ‖ student), both given as log-probabilities."""
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")


def distillation_loss(t: Outputs, s: Outputs, retrieval_weight: float = 1.0) -> dict[str, Tensor]:
    decoder = _kl(F.log_softmax(t.logits, -1), F.log_softmax(s.logits, -1))
    frames = t.ocr.shape[-1]
    ocr = _kl(t.ocr.reshape(-1, frames), s.ocr.reshape(-1, frames))
    t_sim, s_sim = t.scale * t.image @ t.text.T, s.scale * s.image @ s.text.T
    sim = (
        _kl(F.log_softmax(t_sim, 1), F.log_softmax(s_sim, 1))
        + _kl(F.log_softmax(t_sim.T, 1), F.log_softmax(s_sim.T, 1))
    ) / 2
    cosine = 2 - (t.image * s.image).sum(-1).mean() - (t.text * s.text).sum(-1).mean()
    retrieval = sim + cosine
    return {
        "loss": decoder + ocr + retrieval_weight * retrieval,
        "decoder": decoder,
        "ocr": ocr,
        "retrieval": retrieval,
    }
