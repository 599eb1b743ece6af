"""The plain baseline: the same model behind a minimal FastAPI endpoint, as a user would write it.

No batching, no queue limit, no telemetry, no auth, no input hardening: one ``def`` route that
decodes the image and calls the model, which FastAPI runs in its thread pool (its documented
way for blocking work), so concurrent requests call the model from several threads at once.
The model is loaded exactly as ``mobile-mm serve`` loads it (``MobileMultiModalLLM.from_pretrained``
at the same precision, on the CPU) with the same torch thread rule (cores - 1, at least one), so
a comparison measures the serving around the model, not the model.

It accepts the body of our ``POST /inference`` (``image`` as base64 or data URI, ``task``,
``question``, ``texts``, ``max_tokens``), so the same load scripts hit both servers.
``GET /ready`` answers 200 once the model is loaded and has answered once.

Example::

    .venv/bin/python -m benchmarks.peers.plain_fastapi --model default --quantization int2 --port 8090
    curl -X POST 127.0.0.1:8090/inference -H 'Content-Type: application/json' \
         -d '{"image": "data:image/png;base64,...", "task": "captioning"}'
"""

from __future__ import annotations

import argparse
import base64
import io
from typing import Any

import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.engine import configure_torch_threads
from mobile_multimodal.serving.probe import ProbeCase


class Body(BaseModel):
    image: str
    task: str
    question: str | None = None
    texts: list[str] | None = None
    max_tokens: int | None = None


def _image(value: str) -> Image.Image:
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


def create_app(model: MobileMultiModalLLM) -> FastAPI:
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/inference")
    def inference(body: Body) -> dict[str, Any]:
        image = _image(body.image)
        if body.task == "captioning":
            result: dict[str, Any] = {"caption": model.generate_caption(image, body.max_tokens or 32)}
        elif body.task == "ocr":
            result = {"text": model.extract_text(image)}
        elif body.task == "vqa":
            result = {"answer": model.answer_question(image, body.question or "", body.max_tokens or 8)}
        else:
            image_emb = model.get_image_embeddings([image])[0]
            if body.texts:
                scores = model.get_text_embeddings(body.texts) @ image_emb
                result = {"scores": [float(s) for s in scores]}
            else:
                result = {"embedding": [float(x) for x in image_emb]}
        return {"task": body.task, "result": result}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="fp32")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    configure_torch_threads(workers=1)
    model = MobileMultiModalLLM.from_pretrained(args.model, quantization=args.quantization)
    model.generate_caption(ProbeCase.default().image)  # ready means it has answered once
    uvicorn.run(create_app(model), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
