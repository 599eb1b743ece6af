"""MultiModalNet: the whole network (vision encoder, text decoder, CTC reader, retrieval heads).

torch only: no serving, metrics or logging here. The Python API around it is
``model.llm.MobileMultiModalLLM``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mobile_multimodal.model.decoder import TextDecoder
from mobile_multimodal.model.heads import CTCReader, ImageProjection, TextEncoder
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.vision import VisionEncoder


class MultiModalNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0 or cfg.ocr_classes <= 0:
            raise ValueError("config.vocab_size and config.ocr_classes must be set from the tokenizer")
        self.cfg = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        self.encoder = VisionEncoder(cfg)
        self.decoder = TextDecoder(cfg, self.embeddings)
        self.ocr_head = CTCReader(cfg)
        self.image_head = ImageProjection(cfg)
        self.text_encoder = TextEncoder(cfg, self.embeddings)

    def encode_images(
        self, images: Tensor, question_ids: Tensor | None = None, question_valid: Tensor | None = None
    ) -> tuple[Tensor, tuple[int, int]]:
        """Scene images -> image tokens. With ``question_fusion`` and question ids (B, Tq) the
        tokens are conditioned on the question (VQA); without, they are the plain encoding
        (captioning, retrieval)."""
        if question_ids is None or question_ids.shape[1] == 0 or not self.cfg.question_fusion:
            return self.encoder(images)
        return self.encoder(images, question=self.embeddings(question_ids), question_valid=question_valid)

    def read_text(self, line_images: Tensor) -> Tensor:
        """(B, 3, 32, 256) -> CTC log-probs (B, 32, classes)."""
        tokens, _ = self.encoder(line_images, columns=True)
        return self.ocr_head(tokens)

    def image_embeddings(self, images: Tensor) -> Tensor:
        tokens, _ = self.encoder(images)
        return self.image_head(tokens)

    def text_embeddings(self, ids: Tensor, valid: Tensor) -> Tensor:
        return self.text_encoder(ids, valid)

    def components(self) -> dict[str, list[nn.Module]]:
        """Named parts, for per-component memory accounting. The shared token embedding is
        its own component so it is counted once."""
        return {
            "embeddings": [self.embeddings],
            "encoder": [self.encoder],
            "decoder": [self.decoder.pos, self.decoder.blocks, self.decoder.norm],
            "ocr_head": [self.ocr_head],
            "retrieval_head": [
                self.image_head,
                self.text_encoder.pos,
                self.text_encoder.blocks,
                self.text_encoder.norm,
                self.text_encoder.proj,
            ],
        }
