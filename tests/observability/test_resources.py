from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import psutil
import pytest
import torch

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.resources import ResourceSampler, gpu_memory

from .conftest import sample


def test_resource_gauges_match_the_system(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-created-yet"
    sampler = ResourceSampler(data_dir, interval_s=1)
    # 0.3 s of CPU: the percentage comes from clock ticks (10 ms), so a shorter stretch reads 0 %
    # or over 200 % on a busy 2-core machine
    busy_until = time.process_time() + 0.3
    while time.process_time() < busy_until:
        pass
    sampler.sample_once()
    rss = psutil.Process().memory_info().rss
    assert sample("process_memory_usage_bytes") == pytest.approx(rss, rel=0.2)
    assert 0 < sample("process_cpu_usage_percent") <= 100 * (psutil.cpu_count() or 1)
    assert 0 <= sample("system_cpu_usage_percent") <= 100
    assert sample("system_memory_usage_percent") == pytest.approx(psutil.virtual_memory().percent, abs=5)
    usage = shutil.disk_usage(tmp_path)  # the filesystem the data dir will be created on
    free = sample("disk_free_percent", {"path": str(data_dir)})
    assert free == pytest.approx(100 * usage.free / usage.total, abs=1)
    assert 0 < sample("disk_usage_percent", {"path": str(data_dir)}) < 100


def test_sampler_runs_in_the_background_until_cancelled(tmp_path: Path) -> None:
    async def sampled_again(deadline: float) -> None:
        metrics.PROCESS_MEMORY.set(0)  # the next sample sets it back to the process's size
        while sample("process_memory_usage_bytes") == 0:
            assert time.monotonic() < deadline, "the sampler did not sample"
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        sampler = ResourceSampler(tmp_path, interval_s=0.05)
        task = asyncio.create_task(sampler.run())
        deadline = time.monotonic() + 60
        for _ in range(3):  # again and again, every interval_s
            await sampled_again(deadline)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sample("process_memory_usage_bytes") > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_memory_from_torch(tmp_path: Path) -> None:
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda:0")  # 64 MiB
    ResourceSampler(tmp_path).sample_once()
    allocated = sample("gpu_memory_usage_bytes", {"gpu_id": "0", "memory_type": "allocated"})
    assert allocated == torch.cuda.memory_allocated(0) >= block.numel()
    assert sample("gpu_memory_usage_bytes", {"gpu_id": "0", "memory_type": "reserved"}) >= allocated
    total = sample("gpu_memory_usage_bytes", {"gpu_id": "0", "memory_type": "total"})
    # NVML (when pynvml is installed) may count a little more than the CUDA runtime does
    assert total == pytest.approx(torch.cuda.get_device_properties(0).total_memory, rel=0.05)
    assert allocated <= sample("gpu_memory_usage_bytes", {"gpu_id": "0", "memory_type": "used"}) <= total
    del block


def test_no_gpu_series_without_a_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_memory() == {}
