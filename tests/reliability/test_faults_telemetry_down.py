"""Issue 16, item 5: the span collector or the Pushgateway is down.

A collector that accepts connections and never answers (hung), then one that refuses them
(stopped): requests go on answering 200 and the spans that could not be exported are counted in
``trace_spans_dropped_total``. A Pushgateway that hangs or refuses costs an export push at most
its timeout, and the push history in the database makes the next push whole again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.servers import free_port, scene_png_b64

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.observability.pushgateway import ExportGroup, push_export_group

from .serve_process import ServeProcess, metric_value

# Bounds only a failure reaches: a request blocked behind a hung collector would wait for the
# exporter's timeout on every span, and never answer at all were the wait unbounded.
REQUEST_TIMEOUT_S = 60
WAIT_S = 180


class BlackHole:
    """A TCP listener that accepts connections and never reads or answers (a hung collector)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed: stop accepting
            while True:
                conn, _ = self.listener.accept()
                self.held.append(conn)

    def close(self) -> None:
        """From now on the port refuses connections (a stopped collector)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.listener.close()
        for conn in self.held:
            conn.close()
        self.thread.join(30)


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _dropped_spans(url: str) -> float:
    return metric_value(
        httpx.get(url + "/metrics", timeout=REQUEST_TIMEOUT_S).text, "trace_spans_dropped_total"
    )


@pytest.mark.slow
def test_a_hung_then_stopped_span_collector_blocks_no_request(
    tiny_model: MobileMultiModalLLM, tmp_path: Path, black_hole: BlackHole
) -> None:
    env = {
        "MOBILE_MM_MODEL": str(tiny_model.save(tmp_path / "model")),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{black_hole.port}/v1/traces",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",  # seconds per export attempt: the drops show sooner
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with ServeProcess(tmp_path, env=env) as server:
        for phase in ("hung", "stopped"):
            deadline = time.monotonic() + WAIT_S
            for seed in range(20):
                answer = httpx.post(
                    server.url + "/inference",
                    json={"image": scene_png_b64(seed=seed), "task": "ocr"},
                    timeout=REQUEST_TIMEOUT_S,
                )
                assert answer.status_code == 200, (phase, answer.text)
            assert time.monotonic() < deadline, f"{phase}: requests waited on the collector"
            if phase == "hung":
                assert black_hole.held, "the exporter never tried the collector"
                black_hole.close()
        deadline = time.monotonic() + WAIT_S
        while _dropped_spans(server.url) == 0:
            assert time.monotonic() < deadline, "no dropped span counted"
            time.sleep(0.5)
        assert httpx.get(server.url + "/ready", timeout=REQUEST_TIMEOUT_S).status_code == 200


def _group(successes: int) -> ExportGroup:
    return ExportGroup(
        "reliability-host",
        "android",
        "onnx",
        "int2",
        counts={"success": successes},
        durations_s=[1.0] * successes,
    )


def test_a_hung_or_stopped_pushgateway_costs_a_push_at_most_its_timeout(black_hole: BlackHole) -> None:
    started = time.monotonic()
    assert push_export_group(f"http://127.0.0.1:{black_hole.port}", _group(1), timeout_s=1.0) is False
    hung_s = time.monotonic() - started
    black_hole.close()
    assert push_export_group(f"http://127.0.0.1:{black_hole.port}", _group(1), timeout_s=1.0) is False
    # the push gave up on its own timeout (1 s), not after a caller's bound (which would be 60 s)
    assert hung_s < REQUEST_TIMEOUT_S
