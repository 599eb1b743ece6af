"""Data versions of the training generator: which drawings a training batch is made of.

A model's manifest names its ``data_version``; a training preset selects one. Each version says
how often a scene is drawn user-style (``scene_styles.py``) instead of the first generator's way
(``scenes.render_scene``), and how often an OCR line is a user-style line (``text_styles.py``)
instead of ``text_images.sample_text_image``. The held-out splits, the serving canary and the
user-style evaluation split do not depend on the version: they are drawn by their own code from
their own seeds, so adding a version changes none of them.

- ``procedural-v1+easy-vqa-1.0`` (:data:`V1`): the bundled model's data; draws no random number
  of its own, so its batches are byte for byte those of the code before versions existed.
- ``procedural-v2+easy-vqa-1.0`` (:data:`V2`): half the scenes user-style, 65% of the OCR lines
  mixed-case user-style lines up to 32 characters (for the printable-ASCII charset). The other
  half keeps the first generator's exact look, so the existing held-out bars stay trained for.
- ``procedural-v3+easy-vqa-1.0`` (:data:`V3`): V2 with its user-style lines drawn in 25 more
  fonts of 10 more families (``text_images.EXTRA_TRAIN_FONTS``) beside the training fonts, for
  users' text in fonts we never drew. Plain lines and scenes are V2's.

Example::

    version = data_version(V2)
    scene, image = version.scene_image(scenes.sample_scene(rng), rng)
    line = version.text_line(rng, text_images.train_words())
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mobile_multimodal.data import scene_styles, scenes, text_images, text_styles
from mobile_multimodal.data.splits import DATA_VERSION as V1

V2 = "procedural-v2+easy-vqa-1.0"
V3 = "procedural-v3+easy-vqa-1.0"


@dataclass(frozen=True)
class DataVersion:
    name: str
    styled_scene_rate: float = 0.0
    styled_line_rate: float = 0.0
    styled_line_fonts: tuple[str, ...] = text_images.TRAIN_FONTS

    def scene_image(self, scene: scenes.Scene, rng: np.random.Generator) -> tuple[scenes.Scene, Image.Image]:
        """(the scene as drawn, its image): the captions and answers are the returned scene's."""
        if self.styled_scene_rate and rng.random() < self.styled_scene_rate:
            drawing = scene_styles.styled_scene(scene, rng)
            return drawing.scene, drawing.image
        return scene, scenes.render_scene(scene)

    def text_line(self, rng: np.random.Generator, words: tuple[str, ...]) -> text_images.TextSample:
        if self.styled_line_rate and rng.random() < self.styled_line_rate:
            return text_styles.sample_styled_line(rng, self.styled_line_fonts, words)
        return text_images.sample_text_image(rng, text_images.TRAIN_FONTS, words)


DATA_VERSIONS = {
    V1: DataVersion(V1),
    V2: DataVersion(V2, styled_scene_rate=0.5, styled_line_rate=0.65),
    V3: DataVersion(
        V3,
        styled_scene_rate=0.5,
        styled_line_rate=0.65,
        styled_line_fonts=text_images.TRAIN_FONTS + text_images.EXTRA_TRAIN_FONTS,
    ),
}


def data_version(name: str | None) -> DataVersion:
    """The version called ``name``; None (a manifest written before versions were chosen) is V1."""
    if name is None:
        return DATA_VERSIONS[V1]
    if name not in DATA_VERSIONS:
        raise ValueError(f"unknown data version {name!r}; choose one of {sorted(DATA_VERSIONS)}")
    return DATA_VERSIONS[name]
