"""Refuse inference requests before their body is read while the engine is over its wait budget.

Under overload most requests must be refused, and a refusal that first reads a 100 KB body,
parses its JSON and decodes its image costs nearly what an answer costs: the CPU the queue needs
goes to saying no (measured at 2x capacity on 2 cores: accepted throughput fell to a third,
benchmarks/reliability/results.md). This pure-ASGI middleware looks at the engine's admission
(engine.py, admission.py: O(1), a few attribute reads) as soon as the request line and headers
are in; when the work ahead, the requests still decoding included, would make a new request
wait past ``MOBILE_MM_MAX_QUEUE_WAIT_S``, it answers at once: 503 ``OVERLOADED`` in the common
error body and ``Retry-After`` from the expected wait. Nothing is parsed, authenticated or
decoded: the body, if the client sends it, is skipped by the HTTP parser. (Not
``Connection: close``: closing a socket with unread bytes makes the kernel reset the connection,
and a client still sending its body may lose the 503 it was sent.)

Only the expected-wait rule refuses here; the count bound (``MOBILE_MM_MAX_QUEUE``) is checked
once the body names the task, before its image is decoded (request_pipeline.py), so a full
queue's refusals keep their task label. A request refused here is counted like any other
refusal: ``model_inference_requests_total{status="rejected"}``,
``model_inference_errors_total{error_code="OVERLOADED"}`` and ``inference_queue_rejections_total``
with ``task="unknown"`` (the body, which names the task, was not read), and
``inference_admission_refusals_total{reason="expected_wait", stage="before_body"}``. The route
is set in the scope, so the HTTP metrics, the access log and the trace name the route as usual.

Example::

    app.add_middleware(EarlyRefusalMiddleware, engine=engine)   # outside the key check (app.py)
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from mobile_multimodal.errors import ErrorCode, error_response, inference_outcome
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.serving.engine import InferenceEngine

# The routes whose requests go to the engine (request_pipeline.py); all are POST.
ADMITTED_PATHS = frozenset({"/inference", "/model/inference", "/v1/chat/completions"})


class EarlyRefusalMiddleware:
    def __init__(self, app: ASGIApp, engine: InferenceEngine) -> None:
        self.app = app
        self.engine = engine
        self._routes: dict[str, object | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ADMITTED_PATHS and scope["method"] == "POST":
            engine = self.engine
            if engine.state == "ready":  # otherwise the route says why (loading, failed, stopping)
                refusal = engine.refusal(with_arrivals=True)
                if refusal is not None and refusal.reason == "expected_wait":
                    self._count(scope)
                    response = error_response(
                        ErrorCode.OVERLOADED,
                        f"the server is overloaded ({refusal.message}); retry later",
                        headers={"Retry-After": str(refusal.retry_after_s)},
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _count(self, scope: Scope) -> None:
        route = self._route(scope)
        if route is not None:
            scope["route"] = route  # what routing would have set: the metrics' endpoint label
        model_type = self.engine.settings.model_type
        status, error_type = inference_outcome(ErrorCode.OVERLOADED)
        metrics.INFERENCE_REQUESTS.labels(model_type, metrics.UNREAD_TASK, status).inc()
        metrics.INFERENCE_ERRORS.labels(model_type, metrics.UNREAD_TASK, ErrorCode.OVERLOADED.value).inc()
        metrics.QUEUE_REJECTIONS.labels(metrics.UNREAD_TASK).inc()
        metrics.ADMISSION_REFUSALS.labels("expected_wait", "before_body").inc()
        annotate_request(error_type=error_type, model_type=model_type)

    def _route(self, scope: Scope) -> object | None:
        """The route routing would match (looked up once per path: the paths are fixed)."""
        path = scope["path"]
        if path not in self._routes:
            self._routes[path] = _matching_route(scope)
        return self._routes[path]


def _matching_route(scope: Scope) -> object | None:
    router = getattr(scope.get("app"), "router", None)
    return _find_post_route(getattr(router, "routes", ()), scope["path"])


def _find_post_route(routes: Iterable[object], path: str) -> object | None:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router() branch
        if included is not None:
            found = _find_post_route(included.routes, path)
            if found is not None:
                return found
        elif getattr(route, "path", None) == path and "POST" in getattr(route, "methods", ()):
            return route
    return None
