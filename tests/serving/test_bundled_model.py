"""Real answers through HTTP from the bundled (trained) model, fp32 and every shipped quantization.

These run once ``src/mobile_multimodal/weights/default/manifest.json`` exists (it is produced by
training and committed); before that they are skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from mobile_multimodal.data.scenes import Scene, SceneObject, render_scene
from mobile_multimodal.data.text_images import TRAIN_FONTS, render_text
from mobile_multimodal.model import bundled_model_dir
from mobile_multimodal.serving.engine import default_loader

from .conftest import LiveServer, data_uri

BUNDLED = bundled_model_dir()
pytestmark = pytest.mark.skipif(
    not (BUNDLED / "manifest.json").exists(), reason=f"no bundled model at {BUNDLED} yet (train it first)"
)
QUANTIZATIONS = ["fp32"] + [q for q in ("int8", "int4", "int2") if (BUNDLED / q / "manifest.json").exists()]


def _scene(color: str, shape: str, position: str = "center") -> Scene:
    return Scene(
        objects=(SceneObject(shape=shape, color=color, size="large", position=position),),
        background=(245, 245, 245),
        jitter=((0, 0),),
    )


@pytest.mark.slow
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_bundled_model_answers_correctly_over_http(
    live_server: Callable[..., LiveServer], quantization: str
) -> None:
    server = live_server(loader=default_loader, model="default", quantization=quantization)
    with server.client() as client:
        caption = client.post(
            "/inference", json={"image": data_uri(render_scene(_scene("blue", "star"))), "task": "captioning"}
        ).json()
        assert "blue star" in caption["result"]["caption"]
        assert caption["model"]["quantization"] == quantization
        answer = client.post(
            "/inference",
            json={
                "image": data_uri(render_scene(_scene("green", "triangle"))),
                "task": "vqa",
                "question": "what color is the triangle ?",
            },
        ).json()
        assert answer["result"]["answer"] == "green"
        word = render_text("hello", TRAIN_FONTS[0], np.random.default_rng(0))
        text = client.post("/inference", json={"image": data_uri(word), "task": "ocr"}).json()
        assert text["result"]["text"] == "hello"
        scored = client.post(
            "/inference",
            json={
                "image": data_uri(render_scene(_scene("red", "circle"))),
                "task": "retrieval",
                "texts": ["a large yellow star", "a large red circle in the center"],
            },
        )
        assert scored.json()["result"]["best_index"] == 1
        probe = client.get("/model/health")
        assert probe.status_code == 200 and probe.json()["probe"]["correct"] is True
