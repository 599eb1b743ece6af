"""Vision encoder: a small conv stem (stride 8) then a transformer over the feature grid.

The same weights read 64x64 scenes as an 8x8 grid of tokens, and 32x256 text lines as 32
column tokens (the 4 feature rows of each 8-pixel-wide column concatenated and projected):
8 pixels of width per token, enough horizontal resolution for the CTC reader, at a quarter of
the tokens a full grid would cost. Positions are learned row and column embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.config import ModelConfig
from mobile_multimodal.model.layers import EncoderBlock


class DomainBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with one set of running statistics per input domain ("scene", "line").

    Training normalises each domain's batch by its own statistics (scenes and text lines go
    through the stem in separate forward passes), so inference must too: one shared set of
    running statistics would be a blend of both domains and shift every activation of either.
    The inherited buffers hold the scene statistics; the ``*_line`` buffers the text lines'.
    """

    running_mean_line: Tensor
    running_var_line: Tensor
    num_batches_tracked_line: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.register_buffer("running_mean_line", torch.zeros(channels))
        self.register_buffer("running_var_line", torch.ones(channels))
        self.register_buffer("num_batches_tracked_line", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, domain: str = "scene") -> Tensor:
        mean: Tensor | None
        var: Tensor | None
        count: Tensor | None
        if domain == "scene":
            mean, var, count = self.running_mean, self.running_var, self.num_batches_tracked
        elif domain == "line":
            mean, var, count = self.running_mean_line, self.running_var_line, self.num_batches_tracked_line
        else:
            raise ValueError(f"unknown domain {domain!r}; expected 'scene' or 'line'")
        momentum = self.momentum
        if self.training and count is not None:
            count.add_(1)
            if momentum is None:  # cumulative average, used when re-estimating statistics
                momentum = 1.0 / float(count)
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, momentum or 0.0, self.eps)


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm = DomainBatchNorm2d(cout)

    def forward(self, x: Tensor, domain: str) -> Tensor:
        return F.gelu(self.norm(self.conv(x), domain))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
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
        f = images
        for layer in self.stem:
            f = layer(f, "line" if columns else "scene")  # (B, C, h, w) at the end
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
