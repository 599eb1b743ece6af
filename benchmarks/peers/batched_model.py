"""What the framework peers (LitServe, BentoML) run per batch: our ``/inference`` body in, the
model's own batched methods on the batch, our response body out.

A framework's dynamic batching hands a peer a list of requests, which may mix tasks and token
budgets; each group of the same (task, budget) is one call of ``generate_captions``,
``answer_questions`` or ``extract_texts``, which is how a user of that framework would write it
and the same grouping as our batcher's batch key. The model is loaded and threaded by the same
functions ``mobile-mm serve`` uses.

Example::

    model = load_model("default", "int2")
    requests = [parse_request({"image": uri, "task": "captioning"})]
    run_batch(model, requests)   # [{"task": "captioning", "result": {"caption": "..."}}]
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.model_loading import configure_torch_threads
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.serving.schemas import DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT

PEER_TASKS = ("captioning", "ocr", "vqa")
MAX_BATCH_SIZE = 16  # the same cap as ours (MOBILE_MM_MAX_BATCH_SIZE=16 in the benchmark)


class BadRequest(ValueError):
    """The body is not one this peer serves; the framework answers it with a 4xx."""


@dataclass(frozen=True)
class PeerRequest:
    task: str
    image: Image.Image
    question: str
    max_tokens: int


def parse_request(body: Any) -> PeerRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    task = body.get("task")
    if task not in PEER_TASKS:
        raise BadRequest(f"task must be one of {list(PEER_TASKS)}")
    value = body.get("image")
    if not isinstance(value, str) or not value:
        raise BadRequest("image must be a base64 string or a data URI")
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise BadRequest(f"image cannot be decoded: {exc}") from exc
    question = body.get("question") or ""
    if task == "vqa" and (not isinstance(question, str) or not question):
        raise BadRequest("task 'vqa' needs a non-empty 'question'")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS[task]
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer in 1..{MAX_TOKENS_LIMIT}")
    return PeerRequest(task, image, question, max_tokens)


def run_batch(model: MobileMultiModalLLM, requests: list[PeerRequest]) -> list[dict[str, Any]]:
    """One response body per request, in order."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.task, r.max_tokens), []).append(i)
    out: list[dict[str, Any]] = [{} for _ in requests]
    for (task, max_tokens), idx in groups.items():
        images = [requests[i].image for i in idx]
        if task == "captioning":
            results = [{"caption": c} for c in model.generate_captions(images, max_tokens)]
        elif task == "vqa":
            answers = model.answer_questions(images, [requests[i].question for i in idx], max_tokens)
            results = [{"answer": a} for a in answers]
        else:
            results = [{"text": t} for t in model.extract_texts(images)]
        for i, result in zip(idx, results, strict=True):
            out[i] = {"task": task, "result": result}
    return out


def load_model(model: str, quantization: str) -> MobileMultiModalLLM:
    """As ``mobile-mm serve`` loads it: on the CPU, with its thread rule (cores - 1, at least 1:
    one core for the HTTP side), and answered once before it is called ready."""
    configure_torch_threads(workers=1)
    loaded = MobileMultiModalLLM.from_pretrained(model, quantization=quantization)
    loaded.generate_caption(ProbeCase.default().image)
    return loaded
