"""The request bodies every serving and reliability benchmark sends (``POST /inference``).

One fixed input per task, so ours and a peer answer exactly the same requests: captioning and
VQA use the health probe's scene (a large red circle, 64x64 PNG); OCR a text line rendered
with the corpus's own renderer and first training font (fixed seed).

Example::

    body = task_body("vqa")          # {"image": "data:image/png;base64,...", "task": "vqa", "question": ...}
    write_body_file(body, path)      # for wrk's post.lua (BENCH_BODY_FILE)
"""

from __future__ import annotations

import base64
import io
import json
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image

TASKS = ("captioning", "ocr", "vqa")
VQA_QUESTION = "what color is the circle ?"
OCR_TEXT = "benchmark"


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
    path.write_text(json.dumps(body))
    return path
