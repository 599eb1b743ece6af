"""Slow, oversized and spoofing clients against a real ``mobile-mm serve`` process (issue 12).

Each attack once worked: slowloris connections and a silent one stayed open 45 s+, an 8 MB
header and 100k header fields were accepted, a body stalled at 9 MB of 10 held its memory, and
``X-Forwarded-For`` from 127.0.0.1 chose the audited source address (``<script>`` included) and
let a client dodge the error-burst rule by rotating it. The server here runs with the options
``mobile-mm serve`` ships (serving/server.py) and short deadlines, on 127.0.0.1; raw sockets play
the client. Every wait is bounded: a defence that does not act fails the test by a timeout far
longer than the deadline under test, so a slow machine does not fail it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.integration.servers import free_port, wait_http

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.security import create_key
from mobile_multimodal.store import AuditEvent, Database

from .conftest import metric_value

BOUND_S = 30.0  # far above every deadline below (2 s): only a missing defence reaches it
BAD_KEY = {"X-API-Key": "mmk_" + "x" * 43}


class ServeProcess:
    """``mobile-mm serve`` with auth required and a free-tier key made before it starts."""

    def __init__(self, model_dir: Path, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = Database(f"sqlite:///{data_dir / 'mobile_mm.db'}")
        self.key, _ = create_key(self.database, "mallory", "pro")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("MOBILE_MM_", "PROMETHEUS_"))}
        environ.update({"MOBILE_MM_DATA_DIR": str(data_dir), "MOBILE_MM_AUTH": "required", **env})
        command = [sys.executable, "-m", "mobile_multimodal.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--model", str(model_dir)]
        self.proc = subprocess.Popen(
            command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_http(self.url + "/ready", timeout_s=120, process=self.proc)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.database.dispose()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=BOUND_S)

    def audit(self, action: str) -> list[AuditEvent]:
        with self.database.session() as s:
            return list(
                s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
            )

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=BOUND_S).text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(
        tmp_path_factory.mktemp("model") / "m"
    )


@pytest.fixture(scope="module")
def guarded(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(
        model_dir,
        tmp_path_factory.mktemp("guarded"),
        MOBILE_MM_MAX_HEADER_BYTES="16384",
        MOBILE_MM_MAX_HEADERS="50",
        # short enough to watch, long enough that a busy machine's own requests are never cut off
        MOBILE_MM_HEADER_TIMEOUT_S="2",
        MOBILE_MM_BODY_TIMEOUT_S="2",
        MOBILE_MM_BODY_MIN_RATE_BYTES_S="2000",
    )
    yield server
    server.stop()


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed); times out at BOUND_S."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _answered_or_closed(sock: socket.socket, wait_s: float = 0.01) -> bool:
    """Whether the server has closed the connection or answered (only a refusal can come)."""
    sock.settimeout(wait_s)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(BOUND_S)
    return data == b"" or data.startswith(b"HTTP/1.1 408 ")


def _error_code(answer: bytes) -> str:
    return str(json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"])


def _still_serving(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/alive", timeout=BOUND_S).status_code == 200


# --- slow clients ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_silent_connection_is_closed(guarded: ServeProcess) -> None:
    with guarded.connect() as sock:
        answer = _read_until_closed(sock)  # we send nothing at all
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert _error_code(answer) == "CLIENT_TOO_SLOW"


@pytest.mark.slow
def test_slowloris_headers_are_cut_off(guarded: ServeProcess) -> None:
    sockets = [guarded.connect() for _ in range(20)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /alive HTTP/1.1\r\nHost: x\r\n")
        closed: set[int] = set()
        deadline = time.monotonic() + BOUND_S
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            for i, sock in enumerate(sockets):  # one more header line from each, as slowloris does
                if i in closed:
                    continue
                try:
                    sock.sendall(b"X-a: b\r\n")
                except OSError:
                    closed.add(i)
            time.sleep(0.2)
            for i, sock in enumerate(sockets):
                if i not in closed and _answered_or_closed(sock):
                    closed.add(i)
        assert len(closed) == len(sockets), f"{len(sockets) - len(closed)} slowloris connections still open"
    finally:
        for sock in sockets:
            sock.close()
    _still_serving(guarded)


@pytest.mark.slow
def test_a_stalled_body_is_cut_off(guarded: ServeProcess) -> None:
    head = (
        "POST /inference HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {guarded.key}\r\nContent-Length: 3000000\r\n\r\n"
    ).encode()
    with guarded.connect() as sock:
        sock.sendall(head + b'{"image": "' + b"A" * 2_000_000)  # two thirds, then nothing
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert _error_code(answer) == "CLIENT_TOO_SLOW"
    _still_serving(guarded)


@pytest.mark.slow
def test_a_trickled_body_is_cut_off(guarded: ServeProcess) -> None:
    head = (
        "POST /inference HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {guarded.key}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with guarded.connect() as sock:
        sock.sendall(head)
        deadline = time.monotonic() + BOUND_S
        cut_off = False
        while time.monotonic() < deadline and not cut_off:
            try:
                sock.sendall(b"A" * 10)  # 10 bytes every 0.2 s: never idle for 2 s, far under 2000 B/s
            except OSError:
                cut_off = True
                break
            cut_off = _answered_or_closed(sock, wait_s=0.2)
    assert cut_off, "a body trickled at 50 bytes/s was accepted"


# --- oversized heads -------------------------------------------------------------------------
def _send_head_and_answer(server: ServeProcess, head: bytes) -> bytes:
    with server.connect() as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            sock.sendall(head)
        return _read_until_closed(sock)


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 8 * 1024 * 1024 + b"\r\n",  # one 8 MB header
        b"X-H: 1\r\n" * 100_000,  # 100k header fields
    ],
    ids=["8MB-header", "100k-headers"],
)
@pytest.mark.slow
def test_huge_heads_are_refused(guarded: ServeProcess, extra: bytes) -> None:
    answer = _send_head_and_answer(guarded, b"GET /alive HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    # A 431, or a reset that lost it: never the 200 the request would get if it were read whole.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    _still_serving(guarded)


@pytest.mark.slow
def test_too_many_header_fields_is_431(guarded: ServeProcess) -> None:
    answer = _send_head_and_answer(
        guarded, b"GET /alive HTTP/1.1\r\nHost: x\r\n" + b"X-H: 1\r\n" * 60 + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert _error_code(answer) == "HEADERS_TOO_LARGE"


@pytest.mark.slow
def test_a_normal_request_and_keep_alive_still_work(guarded: ServeProcess) -> None:
    with httpx.Client(base_url=guarded.url, timeout=BOUND_S, headers={"X-API-Key": guarded.key}) as client:
        for _ in range(3):  # one connection, three requests
            assert client.get("/alive").status_code == 200
        big = client.post(
            "/inference", json={"image": "data:image/png;base64," + "A" * 300_000, "task": "ocr"}
        )
    assert 400 <= big.status_code < 500 and big.json()["error"]["code"] != "CLIENT_TOO_SLOW"


# --- X-Forwarded-For ---------------------------------------------------------------------------
@pytest.mark.slow
def test_forwarded_for_is_ignored_without_trusted_proxies(guarded: ServeProcess) -> None:
    before = metric_value(guarded.metrics(), "security_events_total", event_type="anomalous_request")
    bursts_before = len(guarded.audit("request.anomaly"))
    with httpx.Client(base_url=guarded.url, timeout=BOUND_S) as client:
        for i in range(25):  # a new forwarded address each time, as if from 25 clients
            spoof = "<script>alert(1)</script>" if i == 0 else f"198.51.100.{i}"
            response = client.post("/inference", headers={**BAD_KEY, "X-Forwarded-For": spoof}, json={})
            assert response.status_code == 401
    sources = {row.source_ip for row in guarded.audit("auth.authenticate")}
    assert sources == {"127.0.0.1"}, sources
    # The rotation did not hide the burst: 20 client errors from one source are one anomaly.
    assert (
        metric_value(guarded.metrics(), "security_events_total", event_type="anomalous_request") == before + 1
    )
    (burst,) = guarded.audit("request.anomaly")[bursts_before:]
    assert (burst.source_ip, burst.details["rule"]) == ("127.0.0.1", "client_error_burst")


@pytest.mark.slow
def test_trusted_proxies_and_the_connection_limit(model_dir: Path, tmp_path: Path) -> None:
    server = ServeProcess(
        model_dir,
        tmp_path,
        MOBILE_MM_TRUSTED_PROXIES="127.0.0.1",
        MOBILE_MM_MAX_CONNECTIONS="4",
        MOBILE_MM_HEADER_TIMEOUT_S="300",  # the idle connections below must outlive the test
    )
    try:
        with httpx.Client(base_url=server.url, timeout=BOUND_S) as client:
            for spoof in ("198.51.100.7", "<script>alert(1)</script>"):
                response = client.post("/inference", headers={**BAD_KEY, "X-Forwarded-For": spoof}, json={})
                assert response.status_code == 401
        assert [row.source_ip for row in server.audit("auth.authenticate")] == ["198.51.100.7", "invalid"]

        idle = [server.connect() for _ in range(4)]  # four silent connections fill the limit
        try:
            with server.connect() as sock:
                sock.sendall(b"GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                refused = _read_until_closed(sock)
                assert refused.startswith(b"HTTP/1.1 503 ")
                # answered like every other overload: Retry-After and the JSON error body (issue 16)
                head, _, body = refused.partition(b"\r\n\r\n")
                assert b"\r\nretry-after: 1\r\n" in head.lower()
                assert json.loads(body)["error"]["code"] == "OVERLOADED"
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + BOUND_S  # the server notices the closes on its next loop turn
        while httpx.get(server.url + "/alive", timeout=BOUND_S).status_code != 200:
            assert time.monotonic() < deadline, "the connection limit did not free up"
            time.sleep(0.05)
    finally:
        server.stop()


@pytest.mark.parametrize(("trusted", "proxy_headers"), [("", False), ("10.0.0.0/8,127.0.0.1", True)])
def test_serve_trusts_forwarded_headers_only_from_configured_proxies(
    trusted: str, proxy_headers: bool
) -> None:
    from mobile_multimodal.serving.server import uvicorn_options
    from mobile_multimodal.settings import Settings

    options = uvicorn_options(Settings(trusted_proxies=trusted))
    assert options["proxy_headers"] is proxy_headers
    assert options["forwarded_allow_ips"] == (trusted or None)
    assert options["http"].endswith("http_limits:GuardedHttpToolsProtocol")


def test_the_readme_names_real_settings_with_their_defaults() -> None:
    from mobile_multimodal.settings import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    paragraph = readme.split("What a client can make the server hold is bounded too")[1].split("\n\n")[0]
    names = re.findall(r"`([A-Z][A-Z_]*[A-Z])`", paragraph)
    assert len(names) >= 9, names
    fields = Settings.model_fields
    for name in names:
        if name not in {"HEADERS_TOO_LARGE", "CLIENT_TOO_SLOW"}:  # error codes, not settings
            assert name.lower() in fields, name
    defaults = Settings.model_construct()  # the declared defaults, whatever the environment says
    assert (defaults.max_header_bytes, defaults.max_headers) == (64 * 1024, 100)
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (10, 15)
    assert (defaults.body_min_rate_bytes_s, defaults.max_connections) == (1024, 1024)
    assert (defaults.model_health_cache_s, defaults.trusted_proxies) == (5, "")
    assert (defaults.auth_failure_audit_limit, defaults.auth_failure_audit_window_s) == (10, 60)
