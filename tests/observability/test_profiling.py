from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import tracemalloc
from pathlib import Path

import jsonschema
import pytest

from mobile_multimodal.observability.config import CpuProfileConfig, MemoryProfileConfig, ProfilingConfig
from mobile_multimodal.observability.profiling import SPEEDSCOPE_SCHEMA, CpuSampler, Profiler

from .conftest import running

SCHEMA_FILE = Path(__file__).parent / "data" / "speedscope-file-format-schema.json"


def _config(tmp_path: Path, **cpu: float) -> ProfilingConfig:
    return ProfilingConfig(
        enabled=True,
        dir=tmp_path / "profiles",
        cpu=CpuProfileConfig(duration_s=0.5, interval_s=3600, sample_interval_ms=cpu.get("ms", 5)),
        memory=MemoryProfileConfig(duration_s=0.3, interval_s=3600, top=10),
    )


def busy_worker_function(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(2000))


def test_cpu_profile_covers_other_threads_in_speedscope_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    take_sample = CpuSampler.sample
    taken = []

    def sample_then_count(sampler: CpuSampler, weight: float) -> None:
        take_sample(sampler, weight)
        taken.append(weight)
        if len(taken) == 30:  # the profile ends after 30 samples, however long a busy machine takes
            sampler.stop.set()

    monkeypatch.setattr(CpuSampler, "sample", sample_then_count)
    stop = threading.Event()
    worker = threading.Thread(target=busy_worker_function, args=(stop,), name="busy-worker")
    worker.start()
    try:
        path = Profiler(_config(tmp_path)).cpu_profile(duration_s=600)
    finally:
        stop.set()
        worker.join()
    assert path.parent == tmp_path / "profiles" / "cpu"
    doc = json.loads(path.read_text())
    assert doc["$schema"] == SPEEDSCOPE_SCHEMA
    jsonschema.validate(doc, json.loads(SCHEMA_FILE.read_text()))  # the format speedscope itself defines
    frames = doc["shared"]["frames"]
    busy = [p for p in doc["profiles"] if p["name"].startswith("busy-worker")]
    assert busy, [p["name"] for p in doc["profiles"]]
    profile = busy[0]
    assert profile["type"] == "sampled" and profile["unit"] == "seconds"
    assert len(profile["samples"]) == len(profile["weights"]) == 30  # the thread is in every sample
    assert profile["weights"] == taken
    assert abs(sum(profile["weights"]) - profile["endValue"]) < 0.1
    # nearly every sample of that thread is inside the busy function (root first, leaf last)
    inside = sum(1 for s in profile["samples"] if any(frames[i]["name"] == "busy_worker_function" for i in s))
    assert inside >= 0.9 * len(profile["samples"])
    assert all(0 <= i < len(frames) for s in profile["samples"] for i in s)
    top = path.with_name(path.name.replace(".speedscope.json", ".top.txt")).read_text()
    assert "busy_worker_function" in top or "<genexpr>" in top


def allocate_on_purpose(store: list[bytes]) -> None:
    for _ in range(200):
        store.append(bytes(10_000))


def test_memory_profile_top_and_diff_name_the_allocating_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: list[bytes] = []
    profiler = Profiler(_config(tmp_path))
    take_snapshot = tracemalloc.take_snapshot
    first_taken = threading.Event()

    def snapshot_then_signal() -> tracemalloc.Snapshot:
        snapshot = take_snapshot()
        first_taken.set()
        return snapshot

    def allocate_then_stop() -> None:
        # another thread allocates between the two snapshots, then ends the window
        first_taken.wait(60)
        allocate_on_purpose(store)
        profiler.stop()

    monkeypatch.setattr(tracemalloc, "take_snapshot", snapshot_then_signal)
    allocator = threading.Thread(target=allocate_then_stop, name="allocator")
    allocator.start()
    top, diff = profiler.memory_profile(duration_s=600)  # ended by the allocator, not by the clock
    allocator.join(60)
    assert first_taken.is_set() and len(store) == 200
    assert top.parent == diff.parent == tmp_path / "profiles" / "memory"
    assert "test_profiling.py" in top.read_text()
    first_entry = diff.read_text().splitlines()[2]
    assert "test_profiling.py" in first_entry and "size=" in first_entry  # ~2 MB grew at that line


def test_scheduler_runs_both_profiles_and_stops_promptly(tmp_path: Path) -> None:
    long = {"cpu": CpuProfileConfig(duration_s=600), "memory": MemoryProfileConfig(duration_s=600)}
    profiler = Profiler(_config(tmp_path).model_copy(update=long))

    async def scenario() -> float:
        task = asyncio.create_task(profiler.run())
        # The event loop stays free while both profiles run in threads: this loop goes on polling.
        deadline = time.monotonic() + 60
        while not running(Profiler.cpu_profile, Profiler.memory_profile):
            assert time.monotonic() < deadline, "the profiles never started"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        profiler.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # to_thread work finishes when the profiler's stop event is set, not after 600 s
        await asyncio.wait_for(asyncio.get_running_loop().shutdown_default_executor(), 60)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 60
    assert list((tmp_path / "profiles" / "cpu").glob("*.speedscope.json"))
    assert list((tmp_path / "profiles" / "memory").glob("*-diff.txt"))
