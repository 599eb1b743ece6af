"""The telemetry's own cost per request in microseconds, in-process, without the model.

An end-to-end latency comparison on a busy machine is dominated by noise in the model's own
run time. This measures only what telemetry adds: a FastAPI app with the real
:class:`~mobile_multimodal.observability.Observability` (middleware, gzip, OTLP export, JSON
logs) and one route that makes the telemetry calls the inference route makes per request
(``annotate_request``; the ``model_inference`` span with the guide's attributes and its six
stages, leaf stages as with auth disabled; the inference counters and the latency histogram with
its exemplar), but no model call. Requests go straight through ASGI (no sockets) in alternating
blocks, "on" (100 % sampling, spans exported over OTLP/HTTP, JSON logs at INFO to a file and to
stdout, which is /dev/null here) against "off" (no middleware, no tracing, logs at WARNING);
logging and tracing are process-wide, so they are switched over between blocks.

Example::

    cost = asyncio.run(measure(blocks=20, per_block=200, otlp_endpoint="http://127.0.0.1:4318"))
    cost["median_diff_us"]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from mobile_multimodal.observability import Observability, metrics
from mobile_multimodal.observability.request_context import annotate_request
from mobile_multimodal.observability.tracing import (
    current_trace_id,
    force_flush,
    leaf_stage,
    stage,
    trace_exemplar,
)
from mobile_multimodal.settings import Settings

# the inference route's stages, all leaf stages with auth disabled (the default), as in
# security/auth_dependencies.py, the serving pipeline and the routes
STAGES = ("authentication", "model_loading", "preprocessing", "inference", "postprocessing", "response")


def _settings(workdir: Path, on: bool, otlp_endpoint: str) -> Settings:
    common: dict[str, Any] = {"data_dir": workdir / "data", "log_dir": workdir / "logs"}
    if on:
        return Settings(
            **common,
            telemetry_enabled=True,
            log_level="INFO",
            otel_traces_sampler="always_on",
            otel_exporter_otlp_endpoint=otlp_endpoint,
        )
    return Settings(**common, telemetry_enabled=False, otel_sdk_disabled=True, log_level="WARNING")


def build_app(settings: Settings) -> tuple[FastAPI, Observability]:
    obs = Observability(settings)
    app = FastAPI()

    @app.post("/inference")
    async def inference() -> JSONResponse:
        task = "captioning"
        annotate_request(task=task, model_type="multimodal", user_type="anonymous")
        attrs: dict[str, str | int] = {
            "model.type": "multimodal",
            "model.task": task,
            "model.quantization": "int2",
            "input.size": 4096,
        }
        with stage("model_inference", attrs) as root:
            for name in STAGES:
                with leaf_stage(name) as span:
                    span.set_attribute("batch_size", 1)
            root.set_attribute("output.size", 42)
            metrics.INFERENCE_REQUESTS.labels("multimodal", task, "success").inc()
            metrics.INFERENCE_DURATION.labels("multimodal", task, "int2").observe(
                0.02, exemplar=trace_exemplar()
            )
            metrics.BATCH_DURATION.labels("1", task).observe(0.02)
            metrics.USAGE_BY_TASK.labels(task, "anonymous").inc()
            annotate_request(batch_size=1)
            return JSONResponse(
                {"task": task, "result": {"caption": "a red circle"}, "trace_id": current_trace_id()}
            )

    obs.install(app)
    return app, obs


async def asgi_exchange(
    app: FastAPI,
    method: str,
    path: str,
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, float]:
    """One HTTP request straight through the app's ASGI interface.

    Returns the status code and the ``time.perf_counter()`` at which the response's last body
    chunk was handed to the server: the moment a client has its whole answer. What the app does
    after that (the middleware's metrics, span and access line) is not part of the latency a client
    sees, though it keeps the event loop busy; ``await`` on this returns after it.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    status = 0
    responded = 0.0
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:  # the body was read: the client stays connected until the response is out
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, responded
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            responded = time.perf_counter()

    await app(scope, receive, send)
    return status, responded


async def asgi_request(
    app: FastAPI,
    method: str,
    path: str,
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> int:
    """:func:`asgi_exchange`, for the status code only."""
    return (await asgi_exchange(app, method, path, body, headers))[0]


_JSON = ((b"content-type", b"application/json"), (b"accept-encoding", b"gzip"))


async def _call(app: FastAPI) -> int:
    return await asgi_request(app, "POST", "/inference", b"{}", _JSON)


async def measure(blocks: int, per_block: int, otlp_endpoint: str) -> dict[str, Any]:
    """Per-request time (µs) of each arm over ``blocks`` alternating blocks of ``per_block`` requests."""
    with tempfile.TemporaryDirectory(prefix="telemetry-micro-") as tmp, open(os.devnull, "w") as devnull:
        arms = {
            arm: build_app(_settings(Path(tmp) / arm, arm == "on", otlp_endpoint)) for arm in ("on", "off")
        }
        times: dict[str, list[float]] = {"on": [], "off": []}
        block_medians: dict[str, list[float]] = {"on": [], "off": []}
        with contextlib.redirect_stdout(devnull):
            for b in range(blocks):
                for arm in ("on", "off") if b % 2 == 0 else ("off", "on"):
                    app, obs = arms[arm]
                    await obs.start()  # logging and tracing are process-wide: configure this arm's
                    await asyncio.to_thread(force_flush)  # the span export process is up (see inprocess.py)
                    try:
                        for _ in range(10):  # settle
                            await _call(app)
                        block = []
                        for _ in range(per_block):
                            start = time.perf_counter_ns()
                            status = await _call(app)
                            block.append((time.perf_counter_ns() - start) / 1000)
                            if status != 200:
                                raise RuntimeError(f"{arm}: status {status}")
                    finally:
                        await obs.stop()
                    times[arm] += block
                    block_medians[arm].append(statistics.median(block))
    diffs = [on - off for on, off in zip(block_medians["on"], block_medians["off"], strict=True)]
    return {
        "blocks": blocks,
        "requests_per_block": per_block,
        "median_us": {arm: statistics.median(v) for arm, v in times.items()},
        "median_diff_us": statistics.median(diffs),
        "block_median_diffs_us": diffs,
    }
