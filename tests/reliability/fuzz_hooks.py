"""Schemathesis hooks for tests/reliability/test_fuzz.py (loaded by ``st run`` through
``SCHEMATHESIS_HOOKS=tests.reliability.fuzz_hooks``).

* ``before_call``: half of the generated inference and chat bodies get a real image (and the
  chat ones the served model's id), so fuzzing reaches the model and the streaming path instead
  of stopping at image validation; the other half go out as generated. The coin is a function
  of the generated body, so a run is reproducible.
* ``error_body_on_4xx``: every 4xx carries ``{"error": {"code", "message"}, ...}``.
* ``after_call``: with ``FUZZ_STATS_FILE`` set, appends one JSON line per call (method, path,
  status, whether the body asked to stream), so the test can see what the fuzzing reached.

Example::

    SCHEMATHESIS_HOOKS=tests.reliability.fuzz_hooks \
        st run URL/openapi.json -c not_a_server_error,error_body_on_4xx
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from functools import cache
from typing import Any

import schemathesis

MODEL_ID = "mobile-multimodal-llm"


@cache
def scene_uri() -> str:
    """The health probe's scene (a large red circle), drawn here so the hooks import no torch."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (245, 245, 245))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(220, 30, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _coin(value: Any) -> bool:
    return hashlib.sha256(repr(value).encode()).digest()[0] % 2 == 0


def make_realistic(path: str, body: Any) -> None:
    if not isinstance(body, dict) or not _coin(body):
        return
    if path in ("/inference", "/model/inference") and "image" in body:
        body["image"] = scene_uri()
    elif path == "/v1/chat/completions":
        # a real user turn (the generated text kept where there is one) for the served model; the
        # other generated fields (stream, max_tokens, n, temperature, ...) stay as generated
        body["model"] = MODEL_ID
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        content = last.get("content") if isinstance(last, dict) else None
        text = content if isinstance(content, str) and content.strip() else "describe the image"
        image = {"type": "image_url", "image_url": {"url": scene_uri()}}
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": text[:200]}, image]}]


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    make_realistic(case.path, case.body)


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    path = os.environ.get("FUZZ_STATS_FILE")
    if not path:
        return
    stream = isinstance(case.body, dict) and case.body.get("stream") is True
    line = {"method": case.method, "path": case.path, "status": response.status_code, "stream": stream}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


@schemathesis.check
def error_body_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    if not 400 <= response.status_code < 500:
        return None
    try:
        error = response.json().get("error")
    except Exception as exc:
        raise AssertionError(
            f"{response.status_code} without a JSON error body: {response.text[:200]}"
        ) from exc
    if not (isinstance(error, dict) and error.get("code") and error.get("message")):
        raise AssertionError(f"{response.status_code} body lacks error.code/message: {response.text[:200]}")
    return True
