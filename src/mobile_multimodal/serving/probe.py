"""A known-answer probe: a scene whose caption we know, used for warm-up and ``/model/health``.

The scene is drawn with the training corpus's own renderer (one large red circle in the centre,
the easiest scene there is), so a healthy model must name its size, colour and shape. A model
with corrupted weights, a broken quantization or a random initialisation will not, and
``/model/health`` then reports ``correct: false`` and HTTP 503.

Example::

    probe = ProbeCase.default()
    caption = model.generate_caption(probe.image)
    probe.is_correct(caption)
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mobile_multimodal.data.scenes import (
    Scene,
    SceneObject,
    canonical_caption,
    parse_caption_objects,
    render_scene,
)


@dataclass(frozen=True)
class ProbeCase:
    """An image, the task to run on it, and how to judge the answer."""

    image: Image.Image
    expected: str
    objects: frozenset[tuple[str, str, str]]  # (size, colour, shape) the caption must name

    @classmethod
    def default(cls) -> ProbeCase:
        scene = Scene(
            objects=(SceneObject(shape="circle", color="red", size="large", position="center"),),
            background=(245, 245, 245),
            jitter=((0, 0),),
        )
        objects = frozenset((o.size, o.color, o.shape) for o in scene.objects)
        return cls(image=render_scene(scene), expected=canonical_caption(scene), objects=objects)

    def is_correct(self, caption: str) -> bool:
        """True when the caption names exactly the scene's objects (size, colour and shape)."""
        return frozenset(parse_caption_objects(caption)) == self.objects
