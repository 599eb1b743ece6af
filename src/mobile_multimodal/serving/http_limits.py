"""Limits on slow and oversized HTTP clients, enforced where uvicorn parses the bytes.

uvicorn's httptools protocol has no limit on the size or number of header fields and no read
timeout: a connection that sends nothing, or one header byte every few seconds (slowloris), or
an 8 MB header, or a body that stops at 9 MB of 10, is kept as long as the client likes. This
subclass adds, per connection (settings in brackets, ``MOBILE_MM_`` prefix):

* the request line and header fields at most ``MAX_HEADER_BYTES`` in total and at most
  ``MAX_HEADERS`` fields, else **431** ``HEADERS_TOO_LARGE`` and the connection is closed.
  The bytes are counted as they arrive, so the parser never buffers more than the limit plus
  one socket read;
* the whole request head within ``HEADER_TIMEOUT_S`` of the connection (or, on a kept-alive
  connection, of the request's first byte), else **408** ``CLIENT_TOO_SLOW`` and close;
* a body that pauses ``BODY_TIMEOUT_S``, or arrives slower on average than
  ``BODY_MIN_RATE_BYTES_S`` after its first ``BODY_TIMEOUT_S`` (a trickle), is cut off the same
  way. Only the client's pace counts: while the app is not reading (uvicorn has paused the
  socket), the clock does not run against the client.

Connection count and keep-alive are uvicorn's own options (``MAX_CONNECTIONS`` becomes
``limit_concurrency``: 503 past it); server.py sets them all. uvicorn's own 503 there is plain text
without ``Retry-After``; this protocol answers it as every other overload is answered: the JSON
error body (``OVERLOADED``) with ``Retry-After``, and the connection closed.

Example::

    uvicorn.run(app, http="mobile_multimodal.serving.http_limits:GuardedHttpToolsProtocol")  # server.py
    # the limits come from the settings (environment), so --workers N processes share them
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from mobile_multimodal.serving.error_handlers import STATUS, ErrorCode
from mobile_multimodal.settings import Settings, get_settings


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
    body_min_rate_bytes_s: float = 1024.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            body_min_rate_bytes_s=settings.body_min_rate_bytes_s,
        )


class _TooManyHeadersError(Exception):
    """Raised in the parser's header callback; httptools stops parsing and reports a parser error."""


def _error_bytes(code: ErrorCode, message: str) -> bytes:
    body = json.dumps({"error": {"code": code.value, "message": message}, "trace_id": None}).encode()
    return b"".join(
        [
            STATUS_LINE[STATUS[code]],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


# Seconds a client refused at the connection limit is told to wait: connections turn over in
# about a request's time, so a short wait.
CONNECTIONS_RETRY_AFTER_S = 1


async def _connection_limit_reached(
    scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    """What a request past ``MAX_CONNECTIONS`` gets instead of uvicorn's plain-text 503."""
    body = json.dumps(
        {
            "error": {
                "code": ErrorCode.OVERLOADED.value,
                "message": "the server has all the connections it accepts open (MOBILE_MM_MAX_CONNECTIONS); "
                "retry later",
            },
            "trace_id": None,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(CONNECTIONS_RETRY_AFTER_S).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring."""

    # Tests may set limits on a subclass; otherwise they come from the settings.
    limits: HttpLimits | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = self.limits or HttpLimits.from_settings(get_settings())
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: tuple[ErrorCode, str] | None = None
        self._in_body = False
        self._body_started = 0.0
        self._body_last = 0.0
        self._body_bytes = 0

    # --- connection ---------------------------------------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if app is service_unavailable:  # uvicorn's answer past limit_concurrency
            app = _connection_limit_reached
        super()._start_asgi_task(cycle, app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._limits.header_timeout_s, self._head_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self._refused and not self.transport.is_closing():
            # Counted after parsing so that a read which also completed the head is not held
            # against it; an unfinished head is never more than the limit plus one read.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(
                    ErrorCode.HEADERS_TOO_LARGE,
                    f"the request line and headers exceed {self._limits.max_header_bytes} bytes",
                )

    def send_400_response(self, msg: str) -> None:
        # The parser stopped: either on malformed input (400, as uvicorn answers) or because
        # our header callback refused the request (its own status).
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            self._refused = True
            self._disarm()
            super().send_400_response(msg)

    # --- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._header_count = True, 0, 0
        if self._timer is None:  # a kept-alive connection's next request: its head starts now
            self._arm(self._limits.header_timeout_s, self._head_deadline)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            self._refusal = (
                ErrorCode.HEADERS_TOO_LARGE,
                f"more than {self._limits.max_headers} header fields",
            )
            raise _TooManyHeadersError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        now = self.loop.time()
        self._in_body, self._body_started, self._body_last, self._body_bytes = True, now, now, 0
        self._arm(self._limits.body_timeout_s, self._body_deadline)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    # --- deadlines ----------------------------------------------------------------------------
    def _head_deadline(self) -> None:
        self._timer = None
        if self._in_head:
            self._refuse(
                ErrorCode.CLIENT_TOO_SLOW,
                f"the request headers did not arrive within {self._limits.header_timeout_s:g} s",
            )

    def _body_deadline(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading: not the client's delay
            self._body_last = now
            self._arm(self._limits.body_timeout_s, self._body_deadline)
            return
        limits = self._limits
        idle_until = self._body_last + limits.body_timeout_s
        rate_until = (
            self._body_started + limits.body_timeout_s + self._body_bytes / limits.body_min_rate_bytes_s
        )
        deadline = min(idle_until, rate_until)
        if now < deadline:
            self._arm(deadline - now, self._body_deadline)
            return
        self._refuse(
            ErrorCode.CLIENT_TOO_SLOW,
            f"the request body stalled ({self._body_bytes} bytes received): a body must not pause "
            f"{limits.body_timeout_s:g} s nor average under {limits.body_min_rate_bytes_s:g} bytes/s",
        )

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(max(delay_s, 0.0), callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, code: ErrorCode, message: str) -> None:
        """Answer ``code`` (unless a response is already on the wire) and close the connection."""
        self._refused = True
        self._in_head = self._in_body = False
        self._disarm()
        if self.transport.is_closing():
            return
        self.logger.warning("%s: %s", code.value, message)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_error_bytes(code, message))
        if cycle is not None and not cycle.response_complete:
            # The app may still be waiting for the body or about to answer: it sees a disconnect
            # and writes nothing after our answer.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
