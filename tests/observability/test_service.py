from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mobile_multimodal.observability import Observability
from mobile_multimodal.observability.config import ObservabilityConfigError
from mobile_multimodal.observability.profiling import Profiler
from mobile_multimodal.settings import Settings

from .app_under_test import build_app
from .conftest import running, sample


def test_a_bad_configuration_stops_the_app_before_it_starts(tmp_path: Path) -> None:
    bad = tmp_path / "observability.yml"
    bad.write_text("tracing:\n  sample_ratio: 2\n")
    with pytest.raises(ObservabilityConfigError, match=r"tracing\.sample_ratio"):
        Observability(Settings(data_dir=tmp_path, observability_config=bad))


def test_profiling_runs_in_the_background_while_requests_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_PROFILING", "true")
    # longer than any test run: the profiles end when the app stops (and are still written)
    monkeypatch.setenv("CPU_PROFILE_DURATION", "600")
    monkeypatch.setenv("MEMORY_PROFILE_DURATION", "600")
    settings = Settings(
        data_dir=tmp_path / "data", log_dir=tmp_path / "logs", profile_dir=tmp_path / "profiles"
    )
    app, obs, _ = build_app(settings)
    assert obs.profiler is not None
    profiles = (Profiler.cpu_profile, Profiler.memory_profile)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while not running(*profiles):
            assert time.monotonic() < deadline, "the profiles never started"
            time.sleep(0.01)
        # requests are answered while both profiles are being taken, not after them
        for _ in range(20):
            assert client.post("/inference").status_code == 200
        assert running(*profiles)
        assert not (tmp_path / "profiles").exists()  # nothing written yet: both are still running
    cpu = list((tmp_path / "profiles" / "cpu").glob("*.speedscope.json"))
    assert len(cpu) == 1
    threads = [p["name"] for p in json.loads(cpu[0].read_text())["profiles"]]
    assert len(threads) >= 2  # the whole process: the event loop thread and the workers, not one thread
    assert len(list((tmp_path / "profiles" / "memory").glob("*-top.txt"))) == 1
    assert len(list((tmp_path / "profiles" / "memory").glob("*-diff.txt"))) == 1


def test_start_samples_resources_and_stop_flushes_the_log(settings: Settings) -> None:
    app, _, _ = build_app(settings)
    with TestClient(app) as client:
        assert sample("process_memory_usage_bytes") > 0  # sampled once at start, not only after 15 s
        client.post("/inference")
    lines = (settings.resolved_log_dir / "application.log").read_text().splitlines()
    assert json.loads(lines[-1])["message"] == "observability stopped"
