"""ASGI middleware feeding the anomaly rules: request line and headers in, response status out.

Runs before routing, so it sees every request (including 404 probes) and every status. A
request whose ``Content-Length`` is over the limit is refused here with 413
``PAYLOAD_TOO_LARGE`` before a byte of its body is read. Detector hits are counted and audited
off the event loop (the audit write is a database write).

Added by :func:`mobile_multimodal.security.install_security`; add it before the app's metrics
and tracing middleware so those wrap it and also see its 413s.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mobile_multimodal.errors import ErrorCode, error_response
from mobile_multimodal.security.client_address import client_ip
from mobile_multimodal.security.security_context import SecurityContext


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, context: SecurityContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        source_ip = client_ip(scope)
        raw = scope.get("raw_path") or scope.get("path", "").encode()
        query = scope.get("query_string", b"")
        raw_path = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        resource = f"{scope.get('method', '?')} {scope.get('path', '')}"
        detector = self.context.detector

        anomaly = detector.inspect_request(source_ip, raw_path, _content_length(scope))
        if anomaly is not None:
            await asyncio.to_thread(self.context.report_anomaly, anomaly, resource=resource)
            if anomaly.rule == "oversized_body":
                response = error_response(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"request body is larger than {detector.max_body_bytes} bytes (MOBILE_MM_MAX_BODY_BYTES)",
                )
                await response(scope, receive, send)
                await self._observe(source_ip, 413, resource)
                return

        status: list[int] = []

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, send_and_watch)
        if status:
            await self._observe(source_ip, status[0], resource)

    async def _observe(self, source_ip: str, status: int, resource: str) -> None:
        burst = self.context.detector.observe_response(source_ip, status)
        if burst is not None:
            await asyncio.to_thread(self.context.report_anomaly, burst, resource=resource)
