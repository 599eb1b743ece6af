"""Refuse request bodies over ``MOBILE_MM_MAX_BODY_BYTES`` before they are buffered.

A declared ``Content-Length`` over the limit is answered 413 at once, without reading the body.
A body sent without one (chunked) is counted as it streams; the first chunk past the limit
raises :class:`BodyTooLargeError`, an ``HTTPException`` so FastAPI re-raises it from its body
parser instead of turning it into a generic 400, and the error handlers render it as 413
``PAYLOAD_TOO_LARGE``. Such a body dodged the security layer's ``Content-Length`` rule, so it
is reported to the app's security context (``app.state.security``, set by ``install_security``)
as an ``oversized_body`` anomaly: ``security_events_total{event_type="anomalous_request"}`` +1
and an audit row, exactly as a declared oversized body is.

Pure ASGI, so it costs a header lookup per request.

Example::

    app.add_middleware(BodyLimitMiddleware, max_bytes=10 * 1024 * 1024)
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobile_multimodal.security import Anomaly, EventType, SecurityContext, client_ip, count_security_event
from mobile_multimodal.serving.error_handlers import ErrorCode, error_response


class BodyTooLargeError(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            # A structured detail, as the security package's errors use; errors.py renders it.
            detail={"code": ErrorCode.PAYLOAD_TOO_LARGE.value, "message": _message(max_bytes)},  # type: ignore[arg-type]
        )


def _message(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes (MOBILE_MM_MAX_BODY_BYTES)"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                # The HTTP parser (h11/httptools) has already refused a malformed Content-Length.
                declared = int(value) if value.isdigit() else 0
                if declared > self.max_bytes:
                    response = error_response(ErrorCode.PAYLOAD_TOO_LARGE, _message(self.max_bytes))
                    await response(scope, receive, send)
                    return
                break
        received = 0
        max_bytes = self.max_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    await _report_oversized(scope, received, max_bytes)
                    raise BodyTooLargeError(max_bytes)
            return message

        await self.app(scope, counting_receive, send)


async def _report_oversized(scope: Scope, received: int, max_bytes: int) -> None:
    anomaly = Anomaly(
        "oversized_body",
        client_ip(scope),
        f"chunked body passed {max_bytes} bytes ({received} received) without a Content-Length",
    )
    app = scope.get("app")
    security = getattr(getattr(app, "state", None), "security", None)
    if isinstance(security, SecurityContext):
        resource = f"{scope.get('method', '?')} {scope.get('path', '')}"
        # the audit row is a database write: off the event loop
        await asyncio.to_thread(security.report_anomaly, anomaly, resource=resource)
    else:  # no database, hence no security context: the event is still counted
        count_security_event(EventType.ANOMALOUS_REQUEST)
