"""The request bodies every serving and reliability benchmark sends (``POST /inference``).

One fixed input per task, so ours and a peer answer exactly the same requests: captioning and
VQA use the health probe's scene (a large red circle, 64x64 PNG); OCR a text line rendered
with the corpus's own renderer and first training font (fixed seed).

The ``mix`` (:func:`mix_items`) is what a service sees: 16 different requests, rotated by
wrk, picked deterministically from the data generator (fixed seed) with their reference
answers: captions of 1-object scenes (short: ~7 words) and of 3-object scenes (the generator's
most; long: ~20 words), VQA on generated scenes, and OCR of rendered words, four of each.

Example::

    body = task_body("vqa")          # {"image": "data:image/png;base64,...", "task": "vqa", "question": ...}
    write_body_file(body, path)      # for wrk's post.lua (BENCH_BODY_FILE: one JSON body a line)
    write_bodies_file([i.body for i in mix_items()], path)   # wrk rotates through these
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

TASKS = ("captioning", "ocr", "vqa")
MIX = "mix"  # the pseudo-task of mix_items(), beside the per-task runs
VQA_QUESTION = "what color is the circle ?"
OCR_TEXT = "benchmark"
MIX_SEED = 2026
MIX_PER_KIND = 4
MIX_KINDS = ("caption_short", "caption_long", "vqa", "ocr")
MIX_OCR_WORDS = ("benchmark", "serving", "latency", "mobile", "quantized", "batch", "model", "phone")
RESULT_FIELD = {"captioning": "caption", "ocr": "text", "vqa": "answer"}


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@cache
def scene_uri() -> str:
    from mobile_multimodal.serving.probe import ProbeCase

    return _data_uri(ProbeCase.default().image)


@cache
def text_line_uri() -> str:
    import numpy as np

    from mobile_multimodal.data.text_images import TRAIN_FONTS, render_text

    return _data_uri(render_text(OCR_TEXT, TRAIN_FONTS[0], np.random.default_rng(0)))


def task_body(task: str, max_tokens: int | None = None) -> dict[str, Any]:
    """The benchmark's request for ``task`` (captioning, ocr, vqa or retrieval)."""
    if task == "ocr":
        body: dict[str, Any] = {"image": text_line_uri(), "task": "ocr"}
    elif task == "vqa":
        body = {"image": scene_uri(), "task": "vqa", "question": VQA_QUESTION}
    elif task == "retrieval":
        body = {
            "image": scene_uri(),
            "task": "retrieval",
            "texts": ["a large red circle", "a small blue square"],
        }
    elif task == "captioning":
        body = {"image": scene_uri(), "task": "captioning"}
    else:
        raise ValueError(f"unknown task {task!r}")
    if max_tokens is not None and task in ("captioning", "vqa"):
        body["max_tokens"] = max_tokens
    return body


def write_body_file(body: dict[str, Any], path: Path) -> Path:
    return write_bodies_file([body], path)


def write_bodies_file(bodies: list[dict[str, Any]], path: Path) -> Path:
    """One compact JSON body a line, the format post.lua reads and rotates through."""
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


@dataclass(frozen=True)
class MixItem:
    kind: str  # one of MIX_KINDS
    body: dict[str, Any]
    expected: str  # the generator's reference answer (canonical caption, answer, rendered word)

    @property
    def task(self) -> str:
        return str(self.body["task"])


def answer_of(task: str, response: dict[str, Any]) -> str:
    """The output text of an ``/inference`` response (``{"task", "result": {...}}``)."""
    return str(response["result"][RESULT_FIELD[task]])


@cache
def mix_items() -> tuple[MixItem, ...]:
    """The mix, interleaved (short caption, long caption, vqa, ocr, short caption, ...) so any
    window of wrk's rotation holds every kind."""
    import numpy as np

    from mobile_multimodal.data.scenes import canonical_caption, render_scene, sample_question, sample_scene
    from mobile_multimodal.data.text_images import TRAIN_FONTS, render_text

    rng = np.random.default_rng(MIX_SEED)
    by_kind: dict[str, list[MixItem]] = {k: [] for k in MIX_KINDS}
    while any(len(v) < MIX_PER_KIND for k, v in by_kind.items() if k != "ocr"):
        scene = sample_scene(rng)
        uri = _data_uri(render_scene(scene))
        n = len(scene.objects)
        kind = "caption_short" if n == 1 else "caption_long" if n >= 3 else "vqa"  # vqa: 2 objects
        if len(by_kind[kind]) == MIX_PER_KIND:
            continue
        if kind == "vqa":
            question, answer = sample_question(scene, rng)
            by_kind[kind].append(MixItem(kind, {"image": uri, "task": "vqa", "question": question}, answer))
        else:
            by_kind[kind].append(
                MixItem(kind, {"image": uri, "task": "captioning"}, canonical_caption(scene))
            )
    for i, word in enumerate(MIX_OCR_WORDS[:MIX_PER_KIND]):
        image = render_text(word, TRAIN_FONTS[i % len(TRAIN_FONTS)], np.random.default_rng(MIX_SEED + i))
        by_kind["ocr"].append(MixItem("ocr", {"image": _data_uri(image), "task": "ocr"}, word))
    return tuple(by_kind[k][i] for i in range(MIX_PER_KIND) for k in MIX_KINDS)


def bodies_for(task: str, max_tokens: int | None = None) -> list[dict[str, Any]]:
    """What wrk sends for ``task``: its one body, or the mix's bodies in rotation order."""
    if task != MIX:
        return [task_body(task, max_tokens)]
    bodies = [dict(item.body) for item in mix_items()]
    if max_tokens is not None:
        for body in bodies:
            if body["task"] in ("captioning", "vqa"):
                body["max_tokens"] = max_tokens
    return bodies
