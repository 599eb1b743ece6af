"""Over its wait budget, the service refuses inference requests before reading their body
(serving/early_refusal.py), counts each refusal, and answers every request it admitted."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx

from mobile_multimodal.serving.engine import InferenceEngine

from .conftest import LiveServer, ModelGate, data_uri, metric_value

IMAGE = data_uri()
BODY = {"image": IMAGE, "task": "captioning", "max_tokens": 4}


def _measured_rate(engine: InferenceEngine, seconds_per_item: float) -> None:
    """Feed the engine's drain rate with batches that took ``seconds_per_item`` per item (the
    warm-up's estimate fades out), as the batcher does after each real batch."""
    for _ in range(60):
        engine.admission.rate.observe(1, seconds_per_item)


def _raw_post_without_body(port: int, path: str) -> tuple[str, dict[str, str], bytes]:
    """Request line and headers announcing a 100 kB body that never comes; the answer's status
    line, headers and body (60 s at most: a server waiting for the body answers 408 after its
    body timeout, never 503)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without an answer: {received!r}"
            received += chunk
        answer_head, _, body = received.partition(b"\r\n\r\n")
        lines = answer_head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "the server closed mid-answer"
            body += chunk
    return lines[0], headers, body


def test_over_budget_is_a_503_before_the_body_is_read(live_server: Callable[..., LiveServer]) -> None:
    gate = ModelGate()
    server = live_server(loader=gate.loader, max_batch_size=1, max_batch_wait_ms=0, max_queue_wait_s=1.0)
    engine: InferenceEngine = server.app.state.engine
    with server.client() as client:
        before = client.get("/metrics").text
        gate.arm()
        held = httpx.Client(base_url=server.url, timeout=120)
        try:
            with held:
                running = _submit_in_thread(held)
                gate.wait_entered()  # one request runs: 1000 s ahead of any other at this rate
                _measured_rate(engine, 1000.0)
                answers = [
                    _raw_post_without_body(server.port, p) for p in ("/inference", "/v1/chat/completions")
                ]
                with_body = client.post("/model/inference", json=BODY)
                _measured_rate(engine, 0.001)  # the model is fast again
                gate.release()
                assert running.result(timeout=120).status_code == 200  # the admitted one is answered
        finally:
            gate.release()
        after = client.get("/metrics").text
    for status_line, headers, body in answers:
        assert status_line.startswith("HTTP/1.1 503"), status_line
        # the expected wait in whole seconds: what is left of the held batch at 1000 s per item
        assert 2 <= int(headers["retry-after"]) <= 1000  # over the 1 s budget: the wait, not a constant
        error = json.loads(body)
        assert error["error"]["code"] == "OVERLOADED" and len(error["trace_id"]) == 32
    assert with_body.status_code == 503 and 2 <= int(with_body.headers["retry-after"]) <= 1000
    refused = {"reason": "expected_wait", "stage": "before_body"}
    grown = metric_value(after, "inference_admission_refusals_total", **refused) - metric_value(
        before, "inference_admission_refusals_total", **refused
    )
    assert grown == 3
    unread = {"model_type": "multimodal", "task": "unknown", "status": "rejected"}
    assert (
        metric_value(after, "model_inference_requests_total", **unread)
        - metric_value(before, "model_inference_requests_total", **unread)
        == 3
    )
    assert (
        metric_value(after, "inference_queue_rejections_total", task="unknown")
        - metric_value(before, "inference_queue_rejections_total", task="unknown")
        == 3
    )
    # the HTTP metrics name the route, though routing never ran
    assert metric_value(after, "http_requests_total", endpoint="/inference", status="503") >= 1


def _submit_in_thread(client: httpx.Client) -> Future[httpx.Response]:

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(client.post, "/inference", json=BODY)
    pool.shutdown(wait=False)
    return future


def test_every_admitted_request_is_answered_under_a_burst(live_server: Callable[..., LiveServer]) -> None:
    """A burst far over a tiny budget: each answer is a 200 or a 503 with Retry-After (no 504, no
    500), and the server's counts match what the clients saw, whichever requests won."""
    server = live_server(max_batch_size=4, max_queue_wait_s=0.001, max_queue=8)
    engine: InferenceEngine = server.app.state.engine
    _measured_rate(engine, 0.05)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/inference", json=BODY) for _ in range(40)))

    with server.client() as client:
        before = client.get("/metrics").text
        responses = asyncio.run(burst())
        after = client.get("/metrics").text
        assert client.get("/ready").status_code == 200
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses  # an idle engine admits: the burst's first is always served
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "OVERLOADED" and int(r.headers["retry-after"]) >= 1
        else:
            assert isinstance(r.json()["result"]["caption"], str)

    def grown(**labels: str) -> float:
        name = "model_inference_requests_total"
        return sum(
            metric_value(after, name, model_type="multimodal", task=t, **labels)
            - metric_value(before, name, model_type="multimodal", task=t, **labels)
            for t in ("captioning", "unknown")
        )

    assert grown(status="success") == statuses.count(200)
    assert grown(status="rejected") == statuses.count(503)
