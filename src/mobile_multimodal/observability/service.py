"""One :class:`Observability` per app: wires metrics, logs, traces, resources and profiling into it.

Example::

    obs = Observability(settings)            # reads + validates monitoring/observability.yml now
    app = FastAPI(lifespan=...)
    obs.install(app)                         # middleware, gzip, GET /metrics and /model/metrics
    # in the lifespan:
    await obs.start()                        # JSON logging, tracing, resource sampler, profiler
    obs.record_model_loaded(model, load_seconds=1.7)
    ...
    await obs.stop()                         # flush spans and logs, stop background tasks
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter
from starlette.middleware.gzip import GZipMiddleware

from mobile_multimodal.observability.config import ObservabilityConfig, load_config
from mobile_multimodal.observability.error_window import ErrorRateWindow
from mobile_multimodal.observability.exposition import MetricsExposition
from mobile_multimodal.observability.logging import configure_logging, shutdown_logging
from mobile_multimodal.observability.model_metrics import record_load_failure, record_model
from mobile_multimodal.observability.profiling import Profiler
from mobile_multimodal.observability.request_telemetry import ObservabilityMiddleware
from mobile_multimodal.observability.resources import ResourceSampler
from mobile_multimodal.observability.tracing import configure_tracing, shutdown_tracing
from mobile_multimodal.settings import Settings

if TYPE_CHECKING:
    from mobile_multimodal.model import MobileMultiModalLLM

_log = logging.getLogger("mobile_multimodal.observability")
METRICS_PATHS = ("/metrics", "/model/metrics")


class Observability:
    def __init__(
        self,
        settings: Settings,
        config: ObservabilityConfig | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        """Validate the configuration now, so a bad file stops the app before it binds a port.

        ``span_exporter`` replaces the OTLP exporter (tests use an in-memory one).
        """
        self.settings = settings
        self.config = config if config is not None else load_config(settings)
        self.model_type = settings.model_type
        self.window = ErrorRateWindow(self.config.metrics.error_rate_window_s)
        self.exposition = MetricsExposition(settings.metrics_token, before_scrape=[self.window.refresh])
        self.resources = ResourceSampler(settings.data_dir, self.config.metrics.resource_sample_interval_s)
        self.profiler = Profiler(self.config.profiling) if self.config.profiling.enabled else None
        self._span_exporter = span_exporter
        self._tasks: list[asyncio.Task[None]] = []

    def install(self, app: FastAPI) -> None:
        """Add the middleware (gzip inside, telemetry outermost, so it times compression too) and routes."""
        native = getattr(app, "_telemetry", None)
        if isinstance(native, dict):
            # Recent FastAPI versions trace requests themselves through the global provider, outside
            # all middleware and with no way to skip /metrics or the probes after construction. Our
            # middleware owns the server span, so the native one would duplicate every request.
            native.update(tracing=False, metrics=False, logs=False)
        if self.config.compression.gzip:
            app.add_middleware(
                GZipMiddleware,
                minimum_size=self.config.compression.minimum_size,
                compresslevel=self.config.compression.level,
            )
        if self.config.enabled:
            app.add_middleware(
                ObservabilityMiddleware, cfg=self.config, window=self.window, model_type=self.model_type
            )
        for path in METRICS_PATHS:
            app.add_api_route(path, self.exposition.handle, methods=["GET"], include_in_schema=False)

    async def start(self) -> None:
        """Configure logging and tracing, then start the resource sampler and the profiler."""
        cfg = self.config
        configure_logging(cfg.logging, self.settings.resolved_log_dir)
        configure_tracing(
            cfg.tracing if cfg.enabled else cfg.tracing.model_copy(update={"enabled": False}),
            cfg.service_name,
            self._span_exporter,
        )
        self.resources.sample_once()
        self._tasks.append(asyncio.create_task(self.resources.run(), name="resource-sampler"))
        if self.profiler is not None:
            self._tasks.append(asyncio.create_task(self.profiler.run(), name="profiler"))
        _log.info(
            "observability started",
            extra={
                "operation": "startup",
                "telemetry": cfg.enabled,
                "log_level": cfg.logging.level,
                "log_sample_ratio": cfg.logging.request_sample_ratio,
                "tracing": cfg.tracing.enabled and cfg.enabled,
                "trace_sampler": cfg.tracing.sampler,
                "trace_sample_ratio": cfg.tracing.sample_ratio,
                "trace_endpoint": cfg.tracing.endpoint,
                "profiling": cfg.profiling.enabled,
            },
        )

    async def stop(self) -> None:
        """Stop background work, export buffered spans, drain the log queue."""
        if self.profiler is not None:
            self.profiler.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.to_thread(shutdown_tracing)
        _log.info("observability stopped", extra={"operation": "shutdown"})
        shutdown_logging()

    def record_model_loaded(self, model: MobileMultiModalLLM, load_seconds: float) -> None:
        """Model gauges: memory per component, load time, accuracy and quantization loss, model_info."""
        record_model(model, load_seconds, self.model_type)
        _log.info(
            "model loaded",
            extra={
                "operation": "model_load",
                "duration_ms": round(load_seconds * 1000, 1),
                "model_type": self.model_type,
                "quantization": model.quantization,
            },
        )

    def record_model_load_failure(self, reason: str) -> None:
        """Count a failed load (``reason``: the ModelLoadError code) and log it at ERROR."""
        record_load_failure(reason, self.model_type)
        _log.error("model load failed", extra={"operation": "model_load", "reason": reason})
