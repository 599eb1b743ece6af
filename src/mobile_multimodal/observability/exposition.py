"""``GET /metrics`` (and ``/model/metrics``): Prometheus text, or OpenMetrics with exemplars on request.

The format follows the scraper's ``Accept`` header (Prometheus asks for OpenMetrics, which is
the only format that carries exemplars). With ``MOBILE_MM_METRICS_TOKEN`` set, a scrape must send
``Authorization: Bearer <token>``. With ``PROMETHEUS_MULTIPROC_DIR`` set (``--workers N``), the
samples of every worker process are aggregated.

Example::

    exposition = MetricsExposition(token=settings.metrics_token, before_scrape=[window.refresh])
    app.add_api_route("/metrics", exposition.handle, methods=["GET"], include_in_schema=False)
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mobile_multimodal.observability import metrics


def scrape_registry() -> CollectorRegistry:
    """The registry to expose: the aggregate of all workers' files in multiprocess mode, else ours."""
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not mp_dir:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=mp_dir)
    return registry


class MetricsExposition:
    def __init__(self, token: str | None, before_scrape: Sequence[Callable[[], None]] = ()) -> None:
        self._token = token.encode() if token else None
        self._before = tuple(before_scrape)

    def authorized(self, header: str | None) -> str | None:
        """None when the scrape may proceed, else the reason it may not (a bounded label)."""
        if self._token is None:
            return None
        if not header or not header.lower().startswith("bearer "):
            return "missing_metrics_token"
        if not hmac.compare_digest(header[7:].strip().encode(), self._token):
            return "invalid_metrics_token"
        return None

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type for an ``Accept`` header."""
        for refresh in self._before:
            refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(scrape_registry()), content_type

    def handle(self, request: Request) -> Response:
        # A plain (sync) handler: FastAPI runs it in the thread pool, so a scrape never holds the loop.
        refusal = self.authorized(request.headers.get("authorization"))
        if refusal is not None:
            metrics.AUTH_FAILURES.labels(refusal).inc()
            return JSONResponse(
                {
                    "error": {
                        "code": "UNAUTHORIZED",
                        "message": "a valid bearer token is required for /metrics",
                    },
                    "trace_id": None,  # the metrics route is never traced
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        body, content_type = self.render(request.headers.get("accept"))
        return Response(body, media_type=None, headers={"Content-Type": content_type})
