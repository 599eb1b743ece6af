"""Dynamic batching, backpressure and timeouts through a real server and the real (tiny) model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from .conftest import LiveServer, data_uri, metric_value

IMAGE = data_uri()


async def _burst(url: str, n: int, body: dict[str, object]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/inference", json=body) for _ in range(n)))


def _batches(metrics_text: str, task: str) -> dict[str, float]:
    return {
        size: metric_value(
            metrics_text, "batch_processing_duration_seconds_count", batch_size=size, task=task
        )
        for size in ("1", "2", "4", "8", "16", "32", "64+")
    }


def test_concurrent_requests_run_as_one_batch(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(max_batch_size=8, max_batch_wait_ms=200)
    with server.client() as client:
        before = _batches(client.get("/metrics").text, "captioning")
        responses = asyncio.run(
            _burst(server.url, 8, {"image": IMAGE, "task": "captioning", "max_tokens": 3})
        )
        after = _batches(client.get("/metrics").text, "captioning")
    assert all(r.status_code == 200 for r in responses)
    # Identical inputs through one batch give identical outputs.
    assert len({r.json()["result"]["caption"] for r in responses}) == 1
    grown = {size: after[size] - before[size] for size in after}
    multi = sum(n for size, n in grown.items() if size != "1")
    assert multi >= 1, f"no batch of more than one request formed: {grown}"
    assert sum(grown.values()) < 8  # fewer model calls than requests


@pytest.mark.slow
def test_overload_is_a_fast_503_with_retry_after(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(max_batch_size=1, max_batch_wait_ms=0, max_queue=2)
    with server.client() as client:
        before = client.get("/metrics").text
        responses = asyncio.run(
            _burst(server.url, 16, {"image": IMAGE, "task": "captioning", "max_tokens": 32})
        )
        after = client.get("/metrics").text
        assert client.get("/ready").status_code == 200
    rejected = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert len(rejected) + len(served) == 16
    assert rejected, "a queue of 2 must overflow under 16 concurrent requests"
    assert len(served) >= 2  # at least the queue's worth
    for r in rejected:
        assert r.json()["error"]["code"] == "OVERLOADED"
        assert int(r.headers["retry-after"]) >= 1
    assert metric_value(after, "inference_queue_rejections_total", task="captioning") == (
        metric_value(before, "inference_queue_rejections_total", task="captioning") + len(rejected)
    )
    labels = {"model_type": "multimodal", "task": "captioning", "status": "rejected"}
    assert metric_value(after, "model_inference_requests_total", **labels) == (
        metric_value(before, "model_inference_requests_total", **labels) + len(rejected)
    )
    assert metric_value(after, "inference_queue_depth", task="captioning") == 0


def test_request_timeout_is_a_504(live_server: Callable[..., LiveServer]) -> None:
    # captioning takes over 10 ms here, far past the 2 ms budget (an OCR line can take under 2 ms)
    server = live_server(request_timeout_s=0.002, max_batch_wait_ms=50)
    with server.client() as client:
        response = client.post("/inference", json={"image": IMAGE, "task": "captioning"})
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "REQUEST_TIMEOUT"
        metrics_text = client.get("/metrics").text
        assert client.get("/ready").status_code == 200
    labels = {"model_type": "multimodal", "task": "captioning", "status": "timeout"}
    assert metric_value(metrics_text, "model_inference_requests_total", **labels) >= 1


@pytest.mark.slow
def test_alive_answers_while_the_model_is_busy(live_server: Callable[..., LiveServer]) -> None:
    """The model runs in a worker thread, so the event loop keeps serving /alive during inference."""
    server = live_server(max_batch_size=1, max_batch_wait_ms=0)

    async def main() -> tuple[list[httpx.Response], list[float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            body = {"image": IMAGE, "task": "captioning", "max_tokens": 16}
            work = asyncio.gather(*(client.post("/inference", json=body) for _ in range(4)))
            await asyncio.sleep(0.05)
            latencies = []
            for _ in range(3):
                start = asyncio.get_running_loop().time()
                assert (await client.get("/alive")).status_code == 200
                latencies.append(asyncio.get_running_loop().time() - start)
            return await work, latencies

    responses, latencies = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert max(latencies) < 0.25
