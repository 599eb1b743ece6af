"""A minimal FastAPI app wired with the real :class:`Observability`, for middleware and exposition tests.

The serving app has its own tests; this one isolates what the observability layer does on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mobile_multimodal.observability import Observability
from mobile_multimodal.observability.config import ObservabilityConfig
from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.settings import Settings


def build_app(
    settings: Settings, config: ObservabilityConfig | None = None
) -> tuple[FastAPI, Observability, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    obs = Observability(settings, config=config, span_exporter=exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await obs.start()
        yield
        await obs.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/inference")
    def inference(task: str = "captioning", user: str | None = None) -> dict[str, str]:
        if user:
            annotate_request(user_id=user, user_type="pro")
        annotate_request(task=task, batch_size=2)
        with stage("model_inference", {"model.type": "multimodal", "model.task": task}), stage("inference"):
            pass
        return {"caption": "a red circle " * 200}  # large enough to be worth compressing

    @app.get("/slow-timeout")
    def timeout() -> None:
        annotate_request(error_type="timeout")
        raise HTTPException(status_code=504, detail="model timed out")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    obs.install(app)
    return app, obs, exporter
