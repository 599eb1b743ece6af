"""Telemetry on vs off on the real serving app with the real model, both arms in one process.

Two server processes with identical settings can differ by several percent for their whole life
(where their threads land on a 2-core machine, memory layout), which swamps a 3 % effect. Here
both arms are instances of the real app (``create_app``) serving the same loaded model inside
one process, so that bias is gone. Requests go through ASGI (no sockets) in short alternating
blocks; logging and tracing are process-wide, so they are switched to the arm that runs next
between blocks (outside the timing). The "on" arm exports every span over OTLP/HTTP to a real
receiver, writes JSON logs at INFO (file and stdout, /dev/null here) and is scraped for
OpenMetrics every second, as Prometheus would; the "off" arm has no middleware, no tracing,
logs at WARNING and no scraper.

Example::

    result = asyncio.run(measure(Path("model"), ("captioning", "ocr"), blocks=20, per_block=20,
                                 otlp_endpoint="http://127.0.0.1:4318"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from benchmarks.telemetry.micro import asgi_request
from fastapi import FastAPI
from tests.integration.servers import scene_png_b64

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.app import create_app
from mobile_multimodal.settings import Settings

_JSON = ((b"content-type", b"application/json"),)
_SCRAPE = ((b"accept", b"application/openmetrics-text;version=1.0.0"), (b"accept-encoding", b"gzip"))


def _settings(workdir: Path, on: bool, otlp_endpoint: str) -> Settings:
    common: dict[str, Any] = {"data_dir": workdir / "data", "log_dir": workdir / "logs", "auth": "disabled"}
    if on:
        return Settings(
            **common,
            telemetry_enabled=True,
            log_level="INFO",
            otel_traces_sampler="always_on",
            otel_exporter_otlp_endpoint=otlp_endpoint,
        )
    return Settings(**common, telemetry_enabled=False, otel_sdk_disabled=True, log_level="WARNING")


@contextlib.asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        engine = app.state.engine
        deadline = time.monotonic() + 300
        while not engine.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not engine.ready:
            raise RuntimeError(f"the model did not load: {engine.state}")
        yield


async def _scraper(app: FastAPI, stop: asyncio.Event) -> int:
    scrapes = 0
    while not stop.is_set():
        if await asgi_request(app, "GET", "/metrics", headers=_SCRAPE) == 200:
            scrapes += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    return scrapes


def _body(task: str, i: int) -> bytes:
    return json.dumps(
        {"image": scene_png_b64(color=("red", "blue", "green")[i % 3], seed=i), "task": task}
    ).encode()


async def measure(
    model_dir: Path, tasks: tuple[str, ...], blocks: int, per_block: int, otlp_endpoint: str
) -> dict[str, Any]:
    """Per-request latency (ms) of each arm and task over ``blocks`` alternating blocks."""
    model = MobileMultiModalLLM.from_pretrained(model_dir)
    bodies = {t: [_body(t, i) for i in range(per_block)] for t in tasks}
    samples: dict[str, dict[str, list[float]]] = {t: {"on": [], "off": []} for t in tasks}
    block_diffs: dict[str, list[float]] = {t: [] for t in tasks}
    with tempfile.TemporaryDirectory(prefix="telemetry-inprocess-") as tmp, open(os.devnull, "w") as devnull:
        apps = {
            arm: create_app(
                _settings(Path(tmp) / arm, arm == "on", otlp_endpoint), model_loader=lambda s: model
            )
            for arm in ("on", "off")
        }
        with contextlib.redirect_stdout(devnull):
            async with _serving(apps["on"]), _serving(apps["off"]):
                current = "off"  # the lifespan entered last configured logging and tracing
                stop = asyncio.Event()
                scraper = asyncio.create_task(_scraper(apps["on"], stop))
                for b in range(blocks):
                    for task in tasks:
                        medians = {}
                        for arm in ("on", "off") if (b % 2 == 0) else ("off", "on"):
                            if arm != current:
                                await apps[current].state.observability.stop()
                                await apps[arm].state.observability.start()
                                current = arm
                            await asgi_request(
                                apps[arm], "POST", "/inference", bodies[task][0], _JSON
                            )  # settle
                            got = []
                            for body in bodies[task]:
                                start = time.perf_counter()
                                status = await asgi_request(apps[arm], "POST", "/inference", body, _JSON)
                                got.append((time.perf_counter() - start) * 1000)
                                if status != 200:
                                    raise RuntimeError(f"{arm} {task}: status {status}")
                            samples[task][arm] += got
                            medians[arm] = statistics.median(got)
                        block_diffs[task].append(medians["on"] - medians["off"])
                stop.set()
                scrapes = await scraper
                if current != "off":  # leave the process configured as the lifespans expect
                    await apps[current].state.observability.stop()
                    await apps["off"].state.observability.start()
    return {"samples": samples, "block_median_diffs_ms": block_diffs, "scrapes": scrapes}
