"""Resource gauges (CPU, memory, disk, GPU) sampled in the background; they feed the guide's
resource alerts (CPU > 90 %, memory > 95 %, disk > 90 %, GPU memory > 95 %).

GPU memory comes from ``torch.cuda`` (allocated and reserved by this process) and, when
``pynvml`` is importable, from NVML (used and total on the device). Without a CUDA device no
``gpu_memory_usage_bytes`` series exists, rather than a misleading zero.

Example::

    sampler = ResourceSampler(data_dir=Path("var"), interval_s=15)
    sampler.sample_once()            # sets the gauges now
    await sampler.run()              # every interval_s until cancelled
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import psutil

from mobile_multimodal.observability import metrics

_log = logging.getLogger(__name__)


def gpu_memory() -> dict[tuple[str, str], float]:
    """(gpu_id, memory_type) -> bytes for every CUDA device; empty without one."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    out: dict[tuple[str, str], float] = {}
    for i in range(torch.cuda.device_count()):
        out[(str(i), "allocated")] = float(torch.cuda.memory_allocated(i))
        out[(str(i), "reserved")] = float(torch.cuda.memory_reserved(i))
        free, total = torch.cuda.mem_get_info(i)
        out[(str(i), "used")] = float(total - free)
        out[(str(i), "total")] = float(total)
    try:  # NVML sees other processes' use of the device too; prefer it for used/total
        import pynvml

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
                out[(str(i), "used")] = float(info.used)
                out[(str(i), "total")] = float(info.total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml absent or NVML unusable: torch's numbers stand
        pass
    return out


class ResourceSampler:
    def __init__(self, data_dir: Path, interval_s: float = 15.0) -> None:
        self.data_dir = data_dir
        self.interval_s = interval_s
        self._process = psutil.Process()
        # cpu_percent measures since the previous call: prime both so the first sample is real.
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def _disk_path(self) -> Path:
        path = self.data_dir.resolve()
        while not path.exists() and path != path.parent:
            path = path.parent  # the data dir may not exist yet: measure the filesystem it will be on
        return path

    def sample_once(self) -> None:
        metrics.CPU_PERCENT.set(self._process.cpu_percent(None))
        metrics.SYSTEM_CPU_PERCENT.set(psutil.cpu_percent(None))
        metrics.SYSTEM_MEMORY_PERCENT.set(psutil.virtual_memory().percent)
        metrics.PROCESS_MEMORY.set(self._process.memory_info().rss)
        disk = psutil.disk_usage(str(self._disk_path()))
        label = str(self.data_dir)
        metrics.DISK_USAGE_PERCENT.labels(label).set(disk.percent)
        metrics.DISK_FREE_PERCENT.labels(label).set(100.0 * disk.free / disk.total if disk.total else 0.0)
        for (gpu_id, kind), value in gpu_memory().items():
            metrics.GPU_MEMORY.labels(gpu_id, kind).set(value)

    async def run(self) -> None:
        """Sample every ``interval_s`` in a worker thread until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sample_once)
            except Exception:
                _log.exception("resource sampling failed")
            await asyncio.sleep(self.interval_s)
