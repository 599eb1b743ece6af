from __future__ import annotations

import numpy as np

from mobile_multimodal.data import scenes
from mobile_multimodal.data.vocabulary import COLORS, POSITIONS


def test_scene_is_a_pure_function_of_the_seed() -> None:
    a = scenes.sample_scene(np.random.default_rng(5))
    b = scenes.sample_scene(np.random.default_rng(5))
    assert a == b
    assert np.array_equal(np.asarray(scenes.render_scene(a)), np.asarray(scenes.render_scene(b)))


def test_rendered_colours_match_the_scene() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        scene = scenes.sample_scene(rng)
        img = np.asarray(scenes.render_scene(scene)).reshape(-1, 3)
        for obj in scene.objects:
            # every object's colour is painted somewhere (exact RGB: no antialiasing in ImageDraw)
            assert (img == np.array(COLORS[obj.color])).all(axis=1).any(), obj


def test_three_paraphrases_all_name_every_object() -> None:
    scene = scenes.sample_scene(np.random.default_rng(2))
    variants = scenes.caption_variants(scene)
    assert len(variants) == 3 and len(set(variants)) == 3
    for caption in variants:
        assert sorted(scenes.parse_caption_objects(caption)) == sorted(
            (o.size, o.color, o.shape) for o in scene.objects
        )
        for o in scene.objects:
            assert o.position in caption


def test_questions_have_answers_consistent_with_the_scene() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = scenes.sample_scene(rng)
        q, a = scenes.sample_question(scene, rng)
        if q.startswith("how many shapes"):
            assert a == ["zero", "one", "two", "three"][len(scene.objects)]
        elif q.startswith("is there a "):
            color, shape = q.removeprefix("is there a ").removesuffix(" ?").split()
            present = any(o.color == color and o.shape == shape for o in scene.objects)
            assert a == ("yes" if present else "no")
        elif q.startswith("where is the"):
            assert a in POSITIONS
        elif q.startswith("what color is the"):
            assert a in COLORS


def test_a_perturbed_scene_differs_in_exactly_one_attribute_of_one_object() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = scenes.sample_scene(rng)
        near = scenes.perturb_scene(scene, rng)
        assert len(near.objects) == len(scene.objects)
        positions = [o.position for o in near.objects]
        assert positions == sorted(positions, key=POSITIONS.index)  # captions keep reading order
        assert len(set(positions)) == len(positions)  # one object per cell
        before = {(o.shape, o.color, o.size, o.position) for o in scene.objects}
        after = {(o.shape, o.color, o.size, o.position) for o in near.objects}
        (old,), (new,) = before - after, after - before
        assert sum(a != b for a, b in zip(old, new, strict=True)) == 1
        assert scenes.canonical_caption(near) != scenes.canonical_caption(scene)
