"""Vision encoder: a small conv stem (stride 8) then a transformer over the feature grid.

The stem is our own (``stem="conv"``) or EfficientNet-Lite0's first layers
(``stem="efficientnet-lite0"``, see ``efficientnet_stem.py``), optionally ImageNet-pretrained.

The same weights read 64x64 scenes as an 8x8 grid of tokens, and 32x256 text lines as 32
column tokens (the 4 feature rows of each 8-pixel-wide column concatenated and projected):
8 pixels of width per token, enough horizontal resolution for the CTC reader, at a quarter of
the tokens a full grid would cost. Positions are learned row and column embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.efficientnet_stem import OUT_CHANNELS as EFFICIENTNET_CHANNELS
from mobile_multimodal.model.efficientnet_stem import efficientnet_lite0_stem, load_imagenet_weights
from mobile_multimodal.model.layers import EncoderBlock
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.norm import DomainBatchNorm2d


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm = DomainBatchNorm2d(cout)

    def forward(self, x: Tensor, domain: str, detail: Tensor | None = None) -> Tensor:
        y = self.conv(x)
        if detail is not None:
            y = y + detail
        return F.gelu(self.norm(y, domain))


class SceneDetail(nn.Module):
    """A scene at twice the stem's resolution, still 64 tokens (``ModelConfig.scene_detail``).

    The stem goes on reading the scene's 2x2 average, which is what a model trained on 64-px
    scenes read; ``channels`` learned features of the full-resolution pixels are added into the
    stem's first conv through ``into_stem``. That conv starts at zero, so a model warm-started
    from a 64-px one computes exactly what it did (``training/warm_start.py``) and learns to
    use the detail from there. Text lines never pass here: the reader keeps its 32-px lines.
    """

    def __init__(self, channels: int, stem_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        self.norm = DomainBatchNorm2d(channels)
        self.into_stem = nn.Conv2d(channels, stem_channels, 3, stride=2, padding=1, bias=False)
        nn.init.zeros_(self.into_stem.weight)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, 2S, 2S) -> the stem's input (B, 3, S, S) and what to add to its first conv's
        output (B, c1, S/2, S/2)."""
        detail = F.gelu(self.norm(self.conv(images), "scene"))
        return F.avg_pool2d(images, 2), self.into_stem(detail)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.stem_name = cfg.stem
        if cfg.stem == "conv":
            c1, c2, c3 = cfg.stem_channels
            # no stride-1 conv at the highest resolution: that layer alone would cost more than the rest
            self.stem = nn.ModuleList(
                [
                    ConvNormAct(3, c1, 2),
                    ConvNormAct(c1, c2, 2),
                    ConvNormAct(c2, c2, 1),
                    ConvNormAct(c2, c3, 2),
                    ConvNormAct(c3, c3, 1),
                ]
            )
            features = c3
            self.scene_detail = SceneDetail(cfg.scene_detail, c1) if cfg.scene_detail else None
        else:  # "efficientnet-lite0" (the config validated the name)
            self.stem = efficientnet_lite0_stem()
            features = EFFICIENTNET_CHANNELS
            self.scene_detail = None  # the config refuses scene_detail without the conv stem
        self.proj = nn.Linear(features, cfg.dim)
        self.line_rows = cfg.ocr_height // 8
        self.column_proj = nn.Linear(self.line_rows * features, cfg.dim)
        self.row_pos = nn.Parameter(torch.zeros(cfg.max_grid_rows, cfg.dim))
        self.col_pos = nn.Parameter(torch.zeros(cfg.max_grid_cols, cfg.dim))
        nn.init.normal_(self.row_pos, std=0.02)
        nn.init.normal_(self.col_pos, std=0.02)
        if cfg.question_fusion:
            # positions of the question's word tokens inside the encoder (early fusion)
            self.question_pos = nn.Parameter(torch.zeros(cfg.max_text_len, cfg.dim))
            nn.init.normal_(self.question_pos, std=0.02)
        self.blocks = nn.ModuleList(
            [EncoderBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.encoder_layers)]
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def load_pretrained_stem(self) -> None:
        """Put ImageNet weights into the stem, for training from them (never needed to serve:
        a saved model carries its stem's weights). Only the EfficientNet-Lite0 stem has any."""
        if self.stem_name != "efficientnet-lite0":
            raise ValueError(
                f"the {self.stem_name!r} stem has no pretrained weights; use stem='efficientnet-lite0'"
            )
        load_imagenet_weights(self.stem)

    def forward(
        self,
        images: Tensor,
        columns: bool = False,
        question: Tensor | None = None,
        question_valid: Tensor | None = None,
    ) -> tuple[Tensor, tuple[int, int]]:
        """images: (B, 3, H, W) normalised to [-1, 1].
        Grid mode -> tokens (B, H/8 * W/8, D), grid (H/8, W/8).
        Column mode (text lines, H = ocr_height) -> tokens (B, W/8, D), grid (1, W/8).
        question: embedded question tokens (B, Tq, D) with question_valid (B, Tq) bool, only
        with ``question_fusion``: they attend jointly with the image tokens in every block, and
        only the image tokens are returned."""
        f, detail, stride = images, None, 8
        if self.scene_detail is not None and not columns:
            f, detail = self.scene_detail(images)
            stride = 16
        for i, layer in enumerate(self.stem):
            if i == 0 and detail is not None:
                f = layer(f, "scene", detail)
            else:
                f = layer(f, "line" if columns else "scene")  # (B, C, h, w) at the end
        b, c, h, w = f.shape
        if w > self.col_pos.shape[0] or (not columns and h > self.row_pos.shape[0]):
            raise ValueError(
                f"image of {images.shape[-2]}x{images.shape[-1]} px exceeds the encoder's "
                f"position table ({self.row_pos.shape[0] * stride}x{self.col_pos.shape[0] * stride} px)"
            )
        if columns:
            if h != self.line_rows:
                raise ValueError(f"text lines must be {self.line_rows * 8} px high, got {images.shape[-2]}")
            x = self.column_proj(f.permute(0, 3, 2, 1).reshape(b, w, h * c)) + self.col_pos[:w][None]
            h = 1
        else:
            x = self.proj(f.flatten(2).transpose(1, 2))  # (B, h*w, D)
            x = x + (self.row_pos[:h, None, :] + self.col_pos[None, :w, :]).reshape(h * w, -1)
        if question is None or question.shape[1] == 0:
            for block in self.blocks:
                x = block(x)
            return self.norm(x), (h, w)
        if not hasattr(self, "question_pos"):
            raise ValueError("this encoder was built without question_fusion")
        n, tq = x.shape[1], question.shape[1]
        if tq > self.question_pos.shape[0]:
            raise ValueError(f"question of {tq} tokens exceeds {self.question_pos.shape[0]}")
        if question_valid is None:
            question_valid = torch.ones(b, tq, dtype=torch.bool, device=x.device)
        x = torch.cat([x, question + self.question_pos[:tq][None]], dim=1)
        keys = torch.cat([torch.ones(b, n, dtype=torch.bool, device=x.device), question_valid], dim=1)
        mask = keys[:, None, None, :]  # every query sees the image and the real question tokens
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.norm(x[:, :n]), (h, w)
