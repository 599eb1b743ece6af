"""Task heads on top of the shared vision encoder: the CTC text reader and the retrieval
projections (image side and a small text encoder)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.model.layers import Attention, EncoderBlock
from mobile_multimodal.model.model_config import ModelConfig


class CTCReader(nn.Module):
    """Reads a text line from its column tokens: each token (8 px of width) is one CTC frame
    (Graves et al. 2006), scored over blank + the character set."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.subframes = cfg.ocr_subframes
        self.classes = cfg.ocr_classes
        self.fc1 = nn.Linear(cfg.dim, cfg.dim)
        self.fc2 = nn.Linear(cfg.dim, cfg.ocr_classes * cfg.ocr_subframes)

    def forward(self, tokens: Tensor) -> Tensor:
        """column tokens (B, T, D) -> log-probabilities (B, T * subframes, classes): each token
        scores ``subframes`` consecutive frames, left to right."""
        b, t, _ = tokens.shape
        scores = self.fc2(F.gelu(self.fc1(tokens))).view(b, t * self.subframes, self.classes)
        return F.log_softmax(scores, dim=-1)


class ImageProjection(nn.Module):
    """Image tokens -> one L2-normalised retrieval embedding.

    "mean" pools the tokens; "attention" lets a few learned queries attend over them and
    projects their concatenation: a mean of (content + position) vectors blurs which object is
    where, while each query can pick out one region and keep its attributes bound together."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.mode = cfg.image_pool
        if self.mode == "attention":
            self.queries = nn.Parameter(torch.zeros(cfg.pool_queries, cfg.dim))
            nn.init.normal_(self.queries, std=0.02)
            self.norm = nn.LayerNorm(cfg.dim)
            self.attn = Attention(cfg.dim, cfg.heads)
            self.proj = nn.Linear(cfg.pool_queries * cfg.dim, cfg.embed_dim)
        else:
            self.proj = nn.Linear(cfg.dim, cfg.embed_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        if self.mode == "mean":
            return F.normalize(self.proj(tokens.mean(dim=1)), dim=-1)
        queries = self.queries[None].expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attn(queries, source=self.norm(tokens))
        return F.normalize(self.proj(pooled.flatten(1)), dim=-1)


class TextEncoder(nn.Module):
    """Bidirectional encoder over word tokens for retrieval; mean-pooled and projected."""

    def __init__(self, cfg: ModelConfig, token_embedding: nn.Embedding) -> None:
        super().__init__()
        self.tok = token_embedding
        self.pos = nn.Embedding(cfg.max_text_len, cfg.dim)
        # GPT-2's scale, the token embedding's: nn.Embedding's default N(0, 1) rows are ~12x
        # longer than the tokens' (dim 160), and a word's identity drowned in its position;
        # the v1 model answered "is there a red star ?" and "... a gray circle ?" alike.
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(
            [EncoderBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.text_encoder_layers)]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.embed_dim)
        # CLIP's learned temperature, initialised at 1/0.07 (Radford et al. 2021)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, ids: Tensor, valid: Tensor) -> Tensor:
        """ids, valid: (B, T) -> L2-normalised embeddings (B, E)."""
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))[None]
        mask = valid[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, mask=mask)
        x = self.norm(x)
        w = valid.unsqueeze(-1).float()
        pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
        return F.normalize(self.proj(pooled), dim=-1)
