"""Fixtures for the serving tests: a real uvicorn server on a free port, and real (tiny) models.

``live_server(settings, loader)`` starts the app from ``create_app`` under uvicorn in a thread,
bound to a socket on 127.0.0.1:0, and stops it (graceful shutdown) at the end of the test.
The model is a real ``MobileMultiModalLLM`` (tiny config, random weights): the tests check the
serving machinery around it, not its answers (see test_bundled_model.py for those).
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.serving.app import create_app
from mobile_multimodal.serving.engine import ModelLoader, ServableModel
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.settings import Settings


def tiny_model(settings: Settings | None = None) -> ServableModel:
    model: ServableModel = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)
    return model


class ModelGate:
    """The real tiny model, whose next caption call after :meth:`arm` is held until
    :meth:`release`: a test can act while the model is busy, or queue requests behind it, however
    fast or slow this machine is. ``live_server(loader=gate.loader)``."""

    def __init__(self) -> None:
        self._armed = False
        self.entered = threading.Event()  # the held call has begun
        self.finished = threading.Event()  # ... and has returned
        self._release = threading.Event()

    def loader(self, settings: Settings | None = None) -> ServableModel:
        model = tiny_model(settings)
        captions = model.generate_captions

        def generate_captions(images: list[Any], *args: Any, **kwargs: Any) -> list[str]:
            if not self._armed:
                return captions(images, *args, **kwargs)
            self._armed = False
            self.entered.set()
            self._release.wait(120)  # (the tests release it; the bound only matters when one fails)
            try:
                return captions(images, *args, **kwargs)
            finally:
                self.finished.set()

        model.generate_captions = generate_captions  # type: ignore[method-assign]
        return model

    def arm(self) -> None:
        self._armed = True

    def wait_entered(self, timeout_s: float = 60) -> None:
        assert self.entered.wait(timeout_s), "the held model call never began"

    def release(self) -> None:
        self._release.set()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "auth": "disabled",
        "max_batch_size": 8,
        "max_batch_wait_ms": 5.0,
        "request_timeout_s": 30.0,
        # each /model/health call runs its probe (tests count model calls); the cache has its own tests
        "model_health_cache_s": 0.0,
        # the canary and shadow call the model too; their own tests turn them on
        "canary_interval_s": 0.0,
        "shadow_sample_rate": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


def png_bytes(img: Image.Image | None = None, fmt: str = "PNG") -> bytes:
    img = img if img is not None else ProbeCase.default().image
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def data_uri(img: Image.Image | None = None, fmt: str = "PNG") -> str:
    mime = {
        "PNG": "image/png",
        "JPEG": "image/jpeg",
        "WEBP": "image/webp",
        "GIF": "image/gif",
        "BMP": "image/bmp",
    }
    return f"data:{mime[fmt]};base64,{base64.b64encode(png_bytes(img, fmt)).decode()}"


def served_caption(client: httpx.Client) -> str:
    """The served caption of the default test image (asserting a 200)."""
    response = client.post("/inference", json={"image": data_uri(), "task": "captioning"})
    assert response.status_code == 200, response.text
    return str(response.json()["result"]["caption"])


class LiveServer:
    """The app under a real uvicorn server in a background thread."""

    def __init__(self, settings: Settings, loader: ModelLoader, **app_kwargs: Any) -> None:
        self.settings = settings
        self.app = create_app(settings, model_loader=loader, **app_kwargs)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_config=None, access_log=False, timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60  # only a server that fails to start gets near this
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        # (not httpx's 5 s default per request: a busy machine may take longer to answer one)
        with httpx.Client(base_url=self.url, timeout=timeout) as client:
            while time.monotonic() < deadline:
                if client.get("/ready").status_code == 200:
                    return
                time.sleep(0.02)
        raise TimeoutError("the server did not become ready")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(loader=tiny_model, ready=True, **settings_overrides)`` -> a started server."""
    servers: list[LiveServer] = []

    def start(
        loader: ModelLoader = tiny_model,
        ready: bool = True,
        app_kwargs: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> LiveServer:
        server = LiveServer(make_settings(tmp_path, **overrides), loader, **(app_kwargs or {})).start()
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A ready server with the tiny model and default test settings, shared by a module's tests
    (they assert metric deltas, never absolute values, so sharing is safe)."""
    started = LiveServer(make_settings(tmp_path_factory.mktemp("server")), tiny_model).start()
    started.wait_ready()
    yield started
    started.stop()


def wait_canary_runs(server: LiveServer, runs: int, timeout_s: float = 120) -> str:
    """/metrics once *this* server's canary has recorded ``runs`` successful runs (bounded wait).

    Not ``model_canary_runs_total``: the registry is per process, so an earlier test's canary
    may have counted a run before this server's has scored anything."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        canary = server.app.state.duties.canary
        if canary is not None and canary.runs >= runs:
            with server.client() as client:
                return client.get("/metrics").text
        time.sleep(0.1)
    raise AssertionError(f"this server's canary did not record {runs} runs within {timeout_s} s")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class OpenAPIChecker:
    """Validates a real response against what the app's OpenAPI schema says that route returns."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def check(self, method: str, path: str, response: httpx.Response) -> None:
        from jsonschema import Draft202012Validator

        operation = self.spec["paths"][path][method.lower()]
        status = str(response.status_code)
        documented = operation["responses"]
        assert status in documented, (
            f"{method} {path} answered {status}, not in the schema ({sorted(documented)})"
        )
        content = documented[status].get("content", {})
        media = response.headers["content-type"].split(";")[0]
        assert media in content, f"{method} {path} {status}: {media} is not documented ({sorted(content)})"
        if media == "application/json":
            schema = {"components": self.spec["components"], **content[media]["schema"]}
            Draft202012Validator(schema).validate(response.json())
