"""Logs and traces for a short-lived process (an export), as the service has them.

The service sets up its telemetry in its lifespan (service.py); a process that runs one job and
exits (``mobile-mm export``, the child process of a ``POST /export`` job) needs the same JSON
lines in the same log file (Promtail ships them: the guide's ``operation="mobile_export"``
query) and the same OTLP spans, then a flush before it exits. A ``traceparent`` (W3C) makes its
spans children of the request that started it.

Example::

    with process_telemetry(get_settings(), traceparent=os.environ.get("TRACEPARENT")):
        run_recorded_export(...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mobile_multimodal.observability.config import load_config
from mobile_multimodal.observability.logging import configure_logging, shutdown_logging
from mobile_multimodal.observability.tracing import configure_tracing, shutdown_tracing
from mobile_multimodal.settings import Settings


@contextmanager
def process_telemetry(
    settings: Settings, *, traceparent: str | None = None, stdout: bool = True
) -> Iterator[None]:
    """``stdout=False``: log lines go to the log file only (a command whose stdout is its output)."""
    cfg = load_config(settings)
    logging_cfg = cfg.logging if stdout else cfg.logging.model_copy(update={"stdout": False})
    configure_logging(logging_cfg, settings.resolved_log_dir)
    # In process: a helper process to export the spans of one job would cost more than it saves.
    tracing = cfg.tracing.model_copy(
        update={"export_process": False, "enabled": cfg.tracing.enabled and cfg.enabled}
    )
    configure_tracing(tracing, cfg.service_name)
    token = None
    if traceparent:
        token = context.attach(TraceContextTextMapPropagator().extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        if token is not None:
            context.detach(token)
        shutdown_tracing()
        shutdown_logging()
