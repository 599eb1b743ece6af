"""Architecture configuration: a dataclass with presets (``ModelConfig.default()``, ``.tiny()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    # vision encoder: conv stem with total stride 8, then a transformer over the feature grid
    stem_channels: tuple[int, int, int] = (24, 48, 96)
    dim: int = 160
    encoder_layers: int = 4
    heads: int = 5
    mlp_ratio: float = 2.5
    max_grid_rows: int = 8  # scenes are 64x64 -> 8x8 tokens; text lines 32x256 -> 4x32 tokens
    max_grid_cols: int = 32
    # text decoder (captioning / VQA), conditioned on the image tokens by cross-attention
    decoder_layers: int = 4
    max_text_len: int = 48
    # text encoder for retrieval (shares the decoder's token embedding)
    text_encoder_layers: int = 2
    embed_dim: int = 128
    # filled from the tokenizer
    vocab_size: int = 0
    ocr_classes: int = 0  # CTC classes: blank + charset
    dropout: float = 0.0
    scene_size: int = 64
    ocr_height: int = 32
    ocr_width: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stem_channels = tuple(self.stem_channels)  # type: ignore[assignment]
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.scene_size % 8 or self.ocr_height % 8 or self.ocr_width % 8:
            raise ValueError("image sizes must be multiples of the stem stride (8)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @classmethod
    def default(cls) -> ModelConfig:
        return cls()

    @classmethod
    def tiny(cls) -> ModelConfig:
        """Two blocks, width 48: builds and runs in milliseconds, for tests."""
        return cls(
            stem_channels=(8, 16, 32),
            dim=48,
            encoder_layers=2,
            heads=2,
            decoder_layers=2,
            text_encoder_layers=1,
            embed_dim=32,
            mlp_ratio=2.0,
        )

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        presets = {"default": cls.default, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stem_channels"] = list(self.stem_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
