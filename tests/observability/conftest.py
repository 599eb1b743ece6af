"""Shared fixtures: settings isolated from the machine's environment, telemetry reset after each test."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mobile_multimodal.observability.config import TracingConfig
from mobile_multimodal.observability.logging import shutdown_logging
from mobile_multimodal.observability.tracing import shutdown_tracing
from mobile_multimodal.settings import Settings

_ENV = (
    "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "MOBILE_MM_LOG_LEVEL", "MOBILE_MM_LOG_SAMPLE_RATIO", "MOBILE_MM_TELEMETRY_ENABLED",
    "MOBILE_MM_METRICS_TOKEN",
    "MOBILE_MM_OBSERVABILITY_CONFIG", "ENABLE_PROFILING", "CPU_PROFILE_DURATION", "CPU_PROFILE_INTERVAL",
    "MEMORY_PROFILE_DURATION", "MEMORY_PROFILE_INTERVAL", "PROMETHEUS_MULTIPROC_DIR",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    shutdown_tracing()
    shutdown_logging()


@pytest.fixture(params=["fast", "sdk"])
def span_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the using module's tests under both settings of ``tracing.fast_path``: its
    ``TracingConfig(...)`` calls get that default (a test may still pass its own). Use it with
    ``pytestmark = pytest.mark.usefixtures("span_mode")``; a test reads the mode from the fixture
    or from ``tracing.fast_path_active()``."""
    fast = request.param == "fast"
    monkeypatch.setattr(request.module, "TracingConfig", functools.partial(TracingConfig, fast_path=fast))
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", log_dir=tmp_path / "logs")


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample in the default registry (0 when the series does not exist yet)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


class SteppedClock:
    """A clock that moves only when the test moves it: what a test decides by elapsed time must
    not depend on how fast this machine is (pass it where the code takes a ``clock``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def running(*functions: Callable[..., Any]) -> bool:
    """Whether, right now, some thread is inside each of ``functions`` (a profile in progress)."""
    wanted = {f.__code__ for f in functions}
    seen = set()
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code in wanted:
                seen.add(f.f_code)
            f = f.f_back
    return seen == wanted
