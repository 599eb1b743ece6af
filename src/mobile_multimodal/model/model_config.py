"""Architecture configuration: a dataclass with presets (``ModelConfig.default()``, ``.tiny()``,
``.default_effnet()``, ``.default_wide_ocr()``, ``.default_scene_detail()``).

Example::

    ModelConfig.from_name("default-wide-ocr").ocr_width   # 512: the reader for 32-char lines
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

STEMS = ("conv", "efficientnet-lite0")
OCR_FITS = ("squeeze", "letterbox")


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
    # Architecture switches. The dataclass defaults are the v1 architecture, so manifests written
    # before a switch existed load unchanged; the presets below turn them on.
    # CTC frames per 8-px column token: 2 gives a frame every 4 px, so doubled narrow letters
    # ("ll", "tt") can be emitted with a blank between them (v1 read "shallow" as "shalow").
    ocr_subframes: int = 1
    # VQA: the question's tokens join the image tokens in the vision encoder (early fusion), so
    # every encoder layer can relate words to image regions, not only the decoder's
    # cross-attention (v1 answered "is there a yellow star ?" at chance).
    question_fusion: bool = False
    # retrieval image embedding: "mean" of the tokens, or "attention" pooling with learned queries
    image_pool: str = "mean"
    pool_queries: int = 4
    # the conv stem: "conv" (ours, widths stem_channels) or "efficientnet-lite0" (its layers up to
    # stride 8, 40 channels, ImageNet-pretrained for training; stem_channels is then unused)
    stem: str = "conv"
    scene_size: int = 64
    ocr_height: int = 32
    ocr_width: int = 256
    # How a text line goes into the ocr_height x ocr_width reader (model/preprocess.py):
    # "squeeze" (v1/v2, the bundled model): scaled to the height, a longer line squeezed
    # horizontally; "letterbox": scaled to fit both sides keeping its aspect ratio, then padded
    # with its own background, so a long line is never distorted.
    ocr_fit: str = "squeeze"
    # Scenes read at twice the resolution for the same 64 tokens (issue 18: a shape of 5% of a
    # user's canvas is 3 px at 64 px, too small to tell a star from a circle). With N > 0 a scene
    # comes in at scene_size (128) and goes through a stride-2 stage first: its 2x2 average (what
    # the 64-px model read) plus N learned full-resolution channels added into the stem's first
    # conv (vision.SceneDetail). 0: the scene goes straight into the stem (v1/v2).
    scene_detail: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stem_channels = tuple(self.stem_channels)  # type: ignore[assignment]
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.scene_size % 8 or self.ocr_height % 8 or self.ocr_width % 8:
            raise ValueError("image sizes must be multiples of the stem stride (8)")
        if self.scene_detail < 0:
            raise ValueError(f"scene_detail must be >= 0, got {self.scene_detail}")
        if self.scene_detail and self.stem != "conv":
            raise ValueError("scene_detail needs the conv stem (its first conv takes the detail)")
        if self.scene_size % self.scene_stride:
            raise ValueError(f"scene_size must be a multiple of {self.scene_stride}, got {self.scene_size}")
        if self.scene_grid > min(self.max_grid_rows, self.max_grid_cols):
            raise ValueError(
                f"a {self.scene_size}-px scene is a {self.scene_grid}x{self.scene_grid} grid, more than "
                f"the position table ({self.max_grid_rows} rows)"
            )
        if self.ocr_subframes < 1:
            raise ValueError(f"ocr_subframes must be >= 1, got {self.ocr_subframes}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.ocr_fit not in OCR_FITS:
            raise ValueError(f"ocr_fit must be one of {OCR_FITS}, got {self.ocr_fit!r}")
        if self.ocr_width // 8 > self.max_grid_cols:
            raise ValueError(
                f"ocr_width {self.ocr_width} needs max_grid_cols >= {self.ocr_width // 8}, "
                f"got {self.max_grid_cols}"
            )
        if self.image_pool not in ("mean", "attention"):
            raise ValueError(f"image_pool must be 'mean' or 'attention', got {self.image_pool!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def scene_stride(self) -> int:
        """Scene pixels per token side: the stem's 8, times 2 with the detail stage."""
        return 16 if self.scene_detail else 8

    @property
    def scene_grid(self) -> int:
        """Tokens per side of a scene: 8 for every preset (64 tokens)."""
        return self.scene_size // self.scene_stride

    @classmethod
    def default(cls) -> ModelConfig:
        return cls(ocr_subframes=2, question_fusion=True, image_pool="attention")

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
            ocr_subframes=2,
            question_fusion=True,
            image_pool="attention",
            pool_queries=2,
        )

    @classmethod
    def default_effnet(cls) -> ModelConfig:
        """``default`` with EfficientNet-Lite0's first layers as the stem: the backbone probe's arm."""
        return replace(cls.default(), stem="efficientnet-lite0")

    @classmethod
    def default_wide_ocr(cls) -> ModelConfig:
        """``default`` with a 32x512 letterboxed text reader: 64 column tokens and 128 CTC frames,
        room for a 32-character line in any font at 8 px per token (a 256-px reader squeezes such
        a line to half its width)."""
        return replace(cls.default(), ocr_width=512, max_grid_cols=64, ocr_fit="letterbox")

    @classmethod
    def default_scene_detail(cls) -> ModelConfig:
        """``default_wide_ocr`` reading scenes at 128 px through 16 detail channels, still 64
        tokens: issue 18's model for users' images, where shapes can be a few pixels at 64 px."""
        return replace(cls.default_wide_ocr(), scene_size=128, scene_detail=16)

    @classmethod
    def tiny_scene_detail(cls) -> ModelConfig:
        """``tiny_wide_ocr`` with ``default_scene_detail``'s scene input, for tests of that path."""
        return replace(cls.tiny_wide_ocr(), scene_size=128, scene_detail=4)

    @classmethod
    def tiny_wide_ocr(cls) -> ModelConfig:
        """``tiny`` with ``default_wide_ocr``'s text reader, for tests of that path."""
        return replace(cls.tiny(), ocr_width=512, max_grid_cols=64, ocr_fit="letterbox")

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        presets = {
            "default": cls.default,
            "default-effnet": cls.default_effnet,
            "default-wide-ocr": cls.default_wide_ocr,
            "default-scene-detail": cls.default_scene_detail,
            "tiny": cls.tiny,
            "tiny-wide-ocr": cls.tiny_wide_ocr,
            "tiny-scene-detail": cls.tiny_scene_detail,
        }
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
