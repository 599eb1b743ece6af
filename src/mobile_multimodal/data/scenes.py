"""Procedural scenes of coloured shapes, with paraphrased captions and question/answer pairs.

A scene is 1..3 objects, each with a shape, colour and size, placed in distinct cells of a
3x3 grid (with jitter). Everything is a pure function of the random generator passed in, so a
split is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from mobile_multimodal.data.vocabulary import COLORS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES

SCENE_SIZE = 64


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    position: str

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    jitter: tuple[tuple[int, int], ...]


def sample_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    cells.sort()  # reading order: captions list objects top-left to bottom-right
    color_names = list(COLORS)
    objects = tuple(
        SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=color_names[int(rng.integers(len(color_names)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            position=POSITIONS[int(c)],
        )
        for c in cells
    )
    shade = int(rng.integers(225, 256))
    background = (
        shade,
        int(np.clip(shade + rng.integers(-8, 9), 0, 255)),
        int(np.clip(shade + rng.integers(-8, 9), 0, 255)),
    )
    jitter = tuple((int(rng.integers(-3, 4)), int(rng.integers(-3, 4))) for _ in objects)
    return Scene(objects=objects, background=background, jitter=jitter)


def perturb_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """A near-duplicate: one object changes one attribute (colour, shape, size, or cell).

    Put beside the original in a contrastive batch, it is a hard negative: retrieval over a
    pool of 1,000 scenes has to tell apart captions that differ in one word, and random
    in-batch scenes almost never do."""
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    o = objects[i]
    attribute = int(rng.integers(4))
    if attribute == 0:
        o = replace(o, color=str(rng.choice([c for c in COLORS if c != o.color])))
    elif attribute == 1:
        o = replace(o, shape=str(rng.choice([s for s in SHAPES if s != o.shape])))
    elif attribute == 2:
        o = replace(o, size="large" if o.size == "small" else "small")
    else:
        taken = {x.position for x in objects}
        free = [p for p in POSITIONS if p not in taken]
        o = replace(o, position=str(rng.choice(free)))
    objects[i] = o
    # keep the reading order (top-left to bottom-right) that captions rely on
    order = sorted(range(len(objects)), key=lambda k: POSITIONS.index(objects[k].position))
    return Scene(
        objects=tuple(objects[k] for k in order),
        background=scene.background,
        jitter=tuple(scene.jitter[k] for k in order),
    )


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def render_scene(scene: Scene, size: int = SCENE_SIZE) -> Image.Image:
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for obj, (jx, jy) in zip(scene.objects, scene.jitter, strict=True):
        idx = POSITIONS.index(obj.position)
        cx = (idx % 3 + 0.5) * cell + jx * size / 64
        cy = (idx // 3 + 0.5) * cell + jy * size / 64
        r = cell * (0.22 if obj.size == "small" else 0.42)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj.shape == "rectangle":
            draw.rectangle([cx - r, cy - r * 0.65, cx + r, cy + r * 0.65], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        else:
            draw.polygon(_star(cx, cy, r * 1.1), fill=fill)
    return img


# ---- captions -------------------------------------------------------------------------------
def _where(position: str, style: int) -> str:
    if position == "center":
        return "in the center"
    if style == 1:
        return f"in the {position}"
    return f"on the {position}" if position in ("left", "right") else f"at the {position}"


def caption_variants(scene: Scene) -> list[str]:
    """Three paraphrased reference captions; the first is the canonical one."""
    objs = scene.objects
    a = " and ".join(f"a {o.phrase} {_where(o.position, 0)}" for o in objs)
    count = NUMBER_WORDS[len(objs)]
    noun = "shape" if len(objs) == 1 else "shapes"
    b = f"{count} {noun} : " + " , ".join(f"{o.phrase} {o.position}" for o in objs)
    c = "there is " + " and ".join(f"a {o.phrase} {_where(o.position, 1)}" for o in objs)
    return [a, b, c]


def canonical_caption(scene: Scene) -> str:
    return caption_variants(scene)[0]


def parse_caption_objects(caption: str) -> list[tuple[str, str, str]]:
    """Read (size, colour, shape) triples back out of a caption, for object-attribute F1."""
    words = caption.replace(",", " ").replace(":", " ").split()
    found = []
    for i in range(len(words) - 2):
        if words[i] in SIZES and words[i + 1] in COLORS and words[i + 2] in SHAPES:
            found.append((words[i], words[i + 1], words[i + 2]))
    return found


# ---- questions ------------------------------------------------------------------------------
def _unique_refs(scene: Scene) -> list[tuple[SceneObject, str]]:
    """Each object with a short description that picks it out unambiguously in this scene."""
    refs = []
    for o in scene.objects:
        for desc, key in (
            (o.shape, lambda x: x.shape),
            (f"{o.color} {o.shape}", lambda x: (x.color, x.shape)),
            (f"{o.size} {o.color} {o.shape}", lambda x: (x.size, x.color, x.shape)),
        ):
            if sum(key(x) == key(o) for x in scene.objects) == 1:
                refs.append((o, desc))
                break
    return refs


def sample_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, answer) pair about the scene."""
    kind = int(rng.integers(8))
    refs = _unique_refs(scene)
    if kind <= 2 and refs:
        o, desc = refs[int(rng.integers(len(refs)))]
        if kind == 0:
            return f"what color is the {desc} ?", o.color
        if kind == 1:
            return f"where is the {desc} ?", o.position
        return f"what size is the {desc} ?", o.size
    if kind == 3:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        same = [x for x in scene.objects if x.color == o.color]
        if len(same) == 1:
            return f"what shape is the {o.color} object ?", o.shape
    if kind == 4:
        return "how many shapes are there ?", NUMBER_WORDS[len(scene.objects)]
    if kind == 5:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        n = sum(o.color == color for o in scene.objects)
        return f"how many {color} shapes are there ?", NUMBER_WORDS[n]
    if kind == 6:
        pos = POSITIONS[int(rng.integers(len(POSITIONS)))]
        at = [o for o in scene.objects if o.position == pos]
        if at:
            return f"what is at the {pos} ?", f"{at[0].color} {at[0].shape}"
    # yes/no: half the time about an object that is there, half about a random one
    if rng.random() < 0.5:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        color, shape = o.color, o.shape
    else:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    present = any(o.color == color and o.shape == shape for o in scene.objects)
    return f"is there a {color} {shape} ?", "yes" if present else "no"
