"""Vision encoder: a small conv stem (stride 8) then a transformer over the feature grid.

The same weights read 64x64 scenes as an 8x8 grid of tokens, and 32x256 text lines as 32
column tokens (the 4 feature rows of each 8-pixel-wide column concatenated and projected):
8 pixels of width per token, enough horizontal resolution for the CTC reader, at a quarter of
the tokens a full grid would cost. Positions are learned row and column embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobile_multimodal.model.config import ModelConfig
from mobile_multimodal.model.layers import EncoderBlock


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()
    )


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.stem_channels
        # no stride-1 conv at the highest resolution: that layer alone would cost more than the rest
        self.stem = nn.Sequential(
            _conv(3, c1, 2),
            _conv(c1, c2, 2),
            _conv(c2, c2, 1),
            _conv(c2, c3, 2),
            _conv(c3, c3, 1),
        )
        self.proj = nn.Linear(c3, cfg.dim)
        self.line_rows = cfg.ocr_height // 8
        self.column_proj = nn.Linear(self.line_rows * c3, cfg.dim)
        self.row_pos = nn.Parameter(torch.zeros(cfg.max_grid_rows, cfg.dim))
        self.col_pos = nn.Parameter(torch.zeros(cfg.max_grid_cols, cfg.dim))
        nn.init.normal_(self.row_pos, std=0.02)
        nn.init.normal_(self.col_pos, std=0.02)
        self.blocks = nn.ModuleList(
            [EncoderBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.encoder_layers)]
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, images: Tensor, columns: bool = False) -> tuple[Tensor, tuple[int, int]]:
        """images: (B, 3, H, W) normalised to [-1, 1].
        Grid mode -> tokens (B, H/8 * W/8, D), grid (H/8, W/8).
        Column mode (text lines, H = ocr_height) -> tokens (B, W/8, D), grid (1, W/8)."""
        f = self.stem(images)  # (B, C, h, w)
        b, c, h, w = f.shape
        if w > self.col_pos.shape[0] or (not columns and h > self.row_pos.shape[0]):
            raise ValueError(
                f"image of {images.shape[-2]}x{images.shape[-1]} px exceeds the encoder's "
                f"position table ({self.row_pos.shape[0] * 8}x{self.col_pos.shape[0] * 8} px)"
            )
        if columns:
            if h != self.line_rows:
                raise ValueError(f"text lines must be {self.line_rows * 8} px high, got {images.shape[-2]}")
            x = self.column_proj(f.permute(0, 3, 2, 1).reshape(b, w, h * c)) + self.col_pos[:w][None]
            h = 1
        else:
            x = self.proj(f.flatten(2).transpose(1, 2))  # (B, h*w, D)
            x = x + (self.row_pos[:h, None, :] + self.col_pos[None, :w, :]).reshape(h * w, -1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), (h, w)
