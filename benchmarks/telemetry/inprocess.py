"""Telemetry on vs off on the real serving app with the real model, both arms in one process.

Two server processes with identical settings can differ by several percent for their whole life
(where their threads land on a 2-core machine, memory layout), which swamps a 3 % effect. Here
both arms are instances of the real app (``create_app``) serving the same loaded model inside
one process, so that bias is gone, and they share one inference engine (one model thread and
batcher): with an engine each, an A/A run (both arms configured "off") still showed up to 2 %
between them. Requests go through ASGI (no sockets) in short alternating blocks. The "on" arm is
the app with its middleware, every span recorded and exported over OTLP/HTTP to a real receiver,
JSON logs at INFO (file and stdout, /dev/null here), and /metrics scraped every second, as
Prometheus would; the "off" arm has no middleware, records no spans and logs at WARNING.

Tracing and logging are process-wide, so the arm about to run is switched in between blocks:
span recording is paused or resumed (``tracing.set_recording``) and the root log level set, while
the span export process and the log writer stay up (idle during "off" blocks). Restarting them
per block (as an earlier version did) put their start-up, paid once per process in production,
into the measurement, and made every switch cost ~0.3 s, which limited the run to a few dozen
blocks: too few on this noisy machine. Before each timed block, whatever the previous block left
(spans to export, log lines to write) is finished, so neither arm pays for the other.

Example::

    result = asyncio.run(measure(Path("model"), ("captioning", "ocr"), blocks=20, per_block=20,
                                 otlp_endpoint="http://127.0.0.1:4318"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from benchmarks.telemetry.micro import asgi_exchange, asgi_request
from fastapi import FastAPI
from tests.integration.servers import scene_png_b64

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.observability.logging import flush_logging
from mobile_multimodal.observability.tracing import force_flush, set_recording
from mobile_multimodal.serving.app import create_app
from mobile_multimodal.settings import Settings

_JSON = ((b"content-type", b"application/json"),)
SETTLE = 2  # untimed requests at the start of each block


async def _switch_to(arm: str) -> None:
    """Make ``arm``'s telemetry the process's, after finishing what the last block left behind."""
    await asyncio.to_thread(force_flush)  # spans of the last block: handed over and exported
    await asyncio.to_thread(flush_logging)  # its log lines: written
    set_recording(arm == "on")
    logging.getLogger().setLevel(logging.INFO if arm == "on" else logging.WARNING)


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
    """Per-request latency (ms, until the whole response was sent) of each arm and task over
    ``blocks`` alternating blocks, and the time until the app returned (``busy_ms``)."""
    model = MobileMultiModalLLM.from_pretrained(model_dir)
    bodies = {t: [_body(t, i) for i in range(per_block)] for t in tasks}
    samples: dict[str, dict[str, list[float]]] = {t: {"on": [], "off": []} for t in tasks}
    block_diffs: dict[str, list[float]] = {t: [] for t in tasks}
    # until the app returned: the response plus the work done after it (see asgi_exchange)
    busy: dict[str, dict[str, list[float]]] = {t: {"on": [], "off": []} for t in tasks}
    with tempfile.TemporaryDirectory(prefix="telemetry-inprocess-") as tmp, open(os.devnull, "w") as devnull:
        apps = {
            arm: create_app(
                _settings(Path(tmp) / arm, arm == "on", otlp_endpoint), model_loader=lambda s: model
            )
            for arm in ("on", "off")
        }
        with contextlib.redirect_stdout(devnull):
            async with _serving(apps["on"]), _serving(apps["off"]):
                # One engine (model thread, batcher) serves both arms, so they differ in telemetry
                # alone. With one engine each, an A/A run (both arms "off") measured the second
                # engine up to 2 % slower or faster for a whole run (where its thread ran).
                apps["off"].state.engine = apps["on"].state.engine
                # the lifespan entered last configured logging and tracing: make it the on arm's
                await apps["off"].state.observability.stop()
                await apps["on"].state.observability.start()
                stop = asyncio.Event()
                scraper = asyncio.create_task(_scraper(apps["on"], stop))
                for b in range(blocks):
                    for task in tasks:
                        medians = {}
                        for arm in ("on", "off") if (b % 2 == 0) else ("off", "on"):
                            await _switch_to(arm)
                            for body in bodies[task][:SETTLE]:
                                await asgi_request(apps[arm], "POST", "/inference", body, _JSON)
                            got = []
                            for body in bodies[task]:
                                start = time.perf_counter()
                                status, responded = await asgi_exchange(
                                    apps[arm], "POST", "/inference", body, _JSON
                                )
                                returned = time.perf_counter()
                                if status != 200:
                                    raise RuntimeError(f"{arm} {task}: status {status}")
                                got.append((responded - start) * 1000)
                                busy[task][arm].append((returned - start) * 1000)
                            samples[task][arm] += got
                            medians[arm] = statistics.median(got)
                        block_diffs[task].append(medians["on"] - medians["off"])
                stop.set()
                scrapes = await scraper
                await _switch_to("on")
                # leave the process configured as the lifespans expect
                await apps["on"].state.observability.stop()
                await apps["off"].state.observability.start()
    return {"samples": samples, "busy_ms": busy, "block_median_diffs_ms": block_diffs, "scrapes": scrapes}
