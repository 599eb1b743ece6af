"""Dynamic batching, backpressure and timeouts through a real server and the real (tiny) model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest

from .conftest import LiveServer, ModelGate, data_uri, metric_value

T = TypeVar("T")

IMAGE = data_uri()


async def _with_client(url: str, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await scenario(client)


async def _until_queued(client: httpx.AsyncClient, task: str, depth: int) -> None:
    """Wait until the server has ``depth`` requests queued for ``task`` (60 s at most: a failure)."""
    deadline = time.monotonic() + 60
    while metric_value((await client.get("/metrics")).text, "inference_queue_depth", task=task) != depth:
        assert time.monotonic() < deadline, f"the server never had {depth} {task} requests queued"
        await asyncio.sleep(0.01)


def _batches(metrics_text: str, task: str) -> dict[str, float]:
    return {
        size: metric_value(
            metrics_text, "batch_processing_duration_seconds_count", batch_size=size, task=task
        )
        for size in ("1", "2", "4", "8", "16", "32", "64+")
    }


def test_requests_queued_together_run_as_one_batch(live_server: Callable[..., LiveServer]) -> None:
    # A first request holds the model; eight sent meanwhile queue up behind it together (on any
    # machine: how close together real clients arrive is up to the network and the scheduler).
    gate = ModelGate()
    server = live_server(loader=gate.loader, max_batch_size=8, max_batch_wait_ms=200)
    body = {"image": IMAGE, "task": "captioning", "max_tokens": 3}

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        gate.arm()
        first = asyncio.create_task(client.post("/inference", json=body))
        await asyncio.to_thread(gate.wait_entered)
        rest = [asyncio.create_task(client.post("/inference", json=body)) for _ in range(8)]
        try:
            await _until_queued(client, "captioning", 8)
        finally:
            gate.release()
        return await asyncio.gather(first, *rest)

    with server.client() as client:
        before = _batches(client.get("/metrics").text, "captioning")
        responses = asyncio.run(_with_client(server.url, main))
        after = _batches(client.get("/metrics").text, "captioning")
    assert all(r.status_code == 200 for r in responses)
    # Identical inputs through one batch give identical outputs.
    assert len({r.json()["result"]["caption"] for r in responses}) == 1
    grown = {size: after[size] - before[size] for size in after}
    assert grown == {"1": 1, "2": 0, "4": 0, "8": 1, "16": 0, "32": 0, "64+": 0}  # two model calls


@pytest.mark.slow
def test_overload_is_a_fast_503_with_retry_after(live_server: Callable[..., LiveServer]) -> None:
    gate = ModelGate()
    server = live_server(loader=gate.loader, max_batch_size=1, max_batch_wait_ms=0, max_queue=2)
    body = {"image": IMAGE, "task": "captioning", "max_tokens": 32}

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        # one request holds the model: of 16 more, two fit in the queue, the other 14 are refused
        gate.arm()
        first = asyncio.create_task(client.post("/inference", json=body))
        await asyncio.to_thread(gate.wait_entered)
        try:
            rest = [asyncio.create_task(client.post("/inference", json=body)) for _ in range(16)]
            done, _ = await asyncio.wait(rest, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert done, "nobody was refused while the model was busy"
            await _until_queued(client, "captioning", 2)
            assert not first.done()
        finally:
            gate.release()
        return await asyncio.gather(first, *rest)

    with server.client() as client:
        before = client.get("/metrics").text
        responses = asyncio.run(_with_client(server.url, main))
        after = client.get("/metrics").text
        assert client.get("/ready").status_code == 200
    rejected = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert len(rejected) + len(served) == 17
    assert len(rejected) == 14 and len(served) == 3  # the held one and the queue's two
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
    # the model is held past the 1 s budget (by the test, not by this machine's speed)
    gate = ModelGate()
    server = live_server(loader=gate.loader, request_timeout_s=1.0, max_batch_wait_ms=50)
    with server.client() as client:
        gate.arm()
        try:
            response = client.post("/inference", json={"image": IMAGE, "task": "captioning"})
        finally:
            gate.release()
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "REQUEST_TIMEOUT"
        metrics_text = client.get("/metrics").text
        assert client.get("/ready").status_code == 200
    labels = {"model_type": "multimodal", "task": "captioning", "status": "timeout"}
    assert metric_value(metrics_text, "model_inference_requests_total", **labels) >= 1


@pytest.mark.slow
def test_alive_answers_while_the_model_is_busy(live_server: Callable[..., LiveServer]) -> None:
    """The model runs in a worker thread, so the event loop keeps serving /alive during inference."""
    gate = ModelGate()
    server = live_server(loader=gate.loader, max_batch_size=1, max_batch_wait_ms=0)
    body = {"image": IMAGE, "task": "captioning", "max_tokens": 16}

    async def main(client: httpx.AsyncClient) -> list[httpx.Response]:
        gate.arm()
        work = [asyncio.create_task(client.post("/inference", json=body)) for _ in range(4)]
        await asyncio.to_thread(gate.wait_entered)
        try:
            for _ in range(3):  # (a model call on the event loop would hold these until the release)
                assert (await client.get("/alive", timeout=30)).status_code == 200
            assert not gate.finished.is_set()  # answered while the model call was still running
        finally:
            gate.release()
        return await asyncio.gather(*work)

    responses = asyncio.run(_with_client(server.url, main))
    assert all(r.status_code == 200 for r in responses)
