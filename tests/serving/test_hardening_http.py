"""Attacks on the HTTP surface that once worked, kept here so they stay fixed (issue 12).

Each test reproduces the attack against a real server on 127.0.0.1 and asserts the defence:

* a flood of ``/model/health`` (no key needed) costs one probe inference, not one per call;
* ``/alive`` and ``/health`` say nothing a caller does not need (no pid, no data path);
* a trailing slash is a 404, never a redirect that echoes the client's ``Host``;
* a 500 names no exception class; its trace id is what the operator looks up.

Slow-client and oversized-header attacks on a real ``mobile-mm serve`` process are in
test_hardening_limits.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.serving.error_handlers import INTERNAL_MESSAGES, ErrorCode
from mobile_multimodal.serving.probe_cache import CachedProbe, ProbeAnswer
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, OpenAPIChecker, data_uri


class CountingModel(MobileMultiModalLLM):
    """The real tiny model; counts the images it captions (each is one probe's inference) and
    can be told to fail its OCR the way a model bug would."""

    captioned = 0
    fail_ocr_with: Exception | None = None

    def generate_captions(self, images: Sequence[Any], *args: Any, **kwargs: Any) -> list[str]:
        type(self).captioned += len(images)
        return super().generate_captions(images, *args, **kwargs)

    def extract_texts(self, images: Sequence[Any], *args: Any, **kwargs: Any) -> list[str]:
        if self.fail_ocr_with is not None:
            raise self.fail_ocr_with
        return super().extract_texts(images, *args, **kwargs)


@pytest.fixture
def counting_model() -> Callable[[Settings], CountingModel]:
    model = CountingModel.from_config(ModelConfig.tiny(), seed=0)
    assert isinstance(model, CountingModel)
    CountingModel.captioned = 0
    return lambda settings: model


async def _flood(url: str, n: int) -> list[httpx.Response]:
    # A fresh connection per call: on a busy machine this client can lag past the server's 5 s
    # keep-alive, and a pooled connection closed meanwhile fails the call (a client-side race).
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        calls = [client.request("POST" if i % 2 else "GET", "/model/health") for i in range(n)]
        return await asyncio.gather(*calls)


def test_a_model_health_flood_runs_one_probe(
    live_server: Callable[..., LiveServer], counting_model: Callable[[Settings], CountingModel]
) -> None:
    server = live_server(loader=counting_model, model_health_cache_s=300.0)
    CountingModel.captioned = 0  # warm-up captioned too
    responses = asyncio.run(_flood(server.url, 200))
    assert len(responses) == 200
    # The tiny model's random weights misname the probe: every answer is the same 503 report.
    assert {r.status_code for r in responses} == {503}
    assert len({r.json()["checked_at"] for r in responses}) == 1
    assert all(r.json()["probe"]["task"] == "captioning" for r in responses)
    assert CountingModel.captioned == 1, f"{CountingModel.captioned} probe inferences for 200 calls"


def test_model_health_probes_again_after_the_interval(
    live_server: Callable[..., LiveServer], counting_model: Callable[[Settings], CountingModel]
) -> None:
    server = live_server(loader=counting_model, model_health_cache_s=0.0)
    CountingModel.captioned = 0
    with server.client() as client:
        for _ in range(3):
            assert client.get("/model/health").json()["probe"] is not None
    assert CountingModel.captioned == 3  # no cache: each sequential call is a fresh probe


def test_concurrent_callers_share_the_probe_in_flight() -> None:
    async def main() -> tuple[int, list[ProbeAnswer]]:
        release = asyncio.Event()
        started = 0

        async def probe() -> ProbeAnswer:
            nonlocal started
            started += 1
            await release.wait()
            return ProbeAnswer(200, {"n": started}, ran_inference=True)

        cache = CachedProbe(probe, ttl_s=0.0)
        callers = [asyncio.create_task(cache.get()) for _ in range(200)]
        await asyncio.sleep(0)  # every caller is now waiting on the one probe
        callers[0].cancel()  # a caller that hangs up does not cancel the others' probe
        release.set()
        answers = await asyncio.gather(*callers[1:])
        return started, answers

    started, answers = asyncio.run(main())
    assert started == 1
    assert {a.body["n"] for a in answers} == {1}


def test_a_probe_that_did_not_run_is_not_cached() -> None:
    async def main() -> list[int]:
        calls = 0

        async def probe() -> ProbeAnswer:
            nonlocal calls
            calls += 1
            return ProbeAnswer(503, {}, ran_inference=False)  # "not ready": nothing ran

        cache = CachedProbe(probe, ttl_s=300.0)
        for _ in range(3):
            await cache.get()
        return [calls]

    assert asyncio.run(main()) == [3]


def test_alive_and_health_reveal_no_pid_or_path(server: LiveServer) -> None:
    with server.client() as client:
        spec = OpenAPIChecker(client.get("/openapi.json").json())
        alive = client.get("/alive")
        health = client.get("/health")
    assert set(alive.json()) == {"status", "uptime_seconds"}
    spec.check("GET", "/alive", alive)
    spec.check("GET", "/health", health)
    assert "disk_path" not in health.json()["details"]
    assert str(server.settings.data_dir) not in health.text


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/inference/"), ("GET", "/health/"), ("GET", "/v1/models/")]
)
def test_a_trailing_slash_is_a_404_that_echoes_no_host(server: LiveServer, method: str, path: str) -> None:
    with server.client() as client:
        response = client.request(method, path, headers={"Host": "evil.example"}, json={})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert "evil.example" not in response.text
    assert response.json()["error"]["code"] == ErrorCode.NOT_FOUND


def test_a_500_names_no_exception_class(
    live_server: Callable[..., LiveServer], counting_model: Callable[[Settings], CountingModel]
) -> None:
    server = live_server(loader=counting_model)
    model = server.app.state.engine.model
    model.fail_ocr_with = IndexError("position_table out of bounds for dimension one")
    with server.client() as client:
        response = client.post("/inference", json={"image": data_uri(), "task": "ocr"})
        spec = OpenAPIChecker(client.get("/openapi.json").json())
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == {
        "code": ErrorCode.INFERENCE_FAILED,
        "message": INTERNAL_MESSAGES[ErrorCode.INFERENCE_FAILED],
    }
    assert "IndexError" not in response.text and "position_table" not in response.text
    assert len(body["trace_id"]) == 32 and body["trace_id"] != "0" * 32
    assert response.headers["x-trace-id"] == body["trace_id"]
    spec.check("POST", "/inference", response)
