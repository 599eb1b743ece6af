"""Loading the served model: the device, the default loader, torch's thread count.

The engine (engine.py) calls a :data:`ModelLoader` on its model thread; any failure becomes a
:class:`ModelLoadFailure` with a code (``MODEL_LOAD_FAILED`` unless the loader named one), which
``/ready`` and ``/health`` report while the service keeps running.

Example::

    model = default_loader(Settings(model="default", quantization="int2", device="auto"))
    configure_torch_threads(workers=1)       # cores - 1 intra-op threads: one core for the loop
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mobile_multimodal.errors import ErrorCode
from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.serving.batch_jobs import ServableModel
from mobile_multimodal.settings import Settings

ModelLoader = Callable[[Settings], ServableModel]


class ModelLoadFailure(Exception):
    """The model could not be loaded (or warmed up): ``code`` is an ErrorCode value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve_device(requested: str) -> str:
    """ "cpu", or "cuda" when asked for (or "auto") and torch sees a GPU. Asking for cuda without
    one is a load failure that says so, never a silent fall back to the CPU."""
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise ModelLoadFailure(
            ErrorCode.MODEL_LOAD_FAILED,
            "MOBILE_MM_DEVICE=cuda (--device cuda) but torch sees no CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto",
        )
    return "cpu"


def default_loader(settings: Settings) -> ServableModel:
    """Load ``settings.model`` (a directory or "default") at ``settings.quantization``, on
    ``settings.device``."""
    from mobile_multimodal.model import MobileMultiModalLLM

    device = resolve_device(settings.device)
    llm = MobileMultiModalLLM.from_pretrained(
        settings.model,
        quantization=settings.quantization,
        stages=lambda name: stage(name),
        signing_key=settings.manifest_signing_key,
    )
    model: ServableModel = llm.to(device) if device != "cpu" else llm
    return model


def torch_threads_for(workers: int, requested: int = 0) -> int:
    """Intra-op threads per worker: ``requested``, or (cores // workers) - 1, at least 1.

    One core is left to the event loop (HTTP parsing, image decoding, JSON): measured on two
    cores, two OpenMP threads competing with the event loop made a 8 ms caption take 300 ms.
    """
    if requested > 0:
        return requested
    return max(1, (os.cpu_count() or 1) // max(1, workers) - 1)


def onnx_threads_for(workers: int, requested: int = 0, concurrency: int = 1) -> int:
    """ONNX Runtime intra-op threads per session: ``requested``, or each of a worker's
    ``concurrency`` concurrent batches its share of the worker's cores (at least 1).

    Unlike torch's OpenMP threads, the sessions' pool threads do not spin between graphs
    (``onnx_sessions.BundleSessions``), so the event loop gets the core back whenever a graph
    ends. Measured on two cores, the task mix at concurrency 32: one batch at a time on two such
    threads served 1.22x the requests of one thread (two spinning threads: 0.67x); two batches at
    once on one thread each served 1.09x the requests of two batches on two threads each.
    """
    if requested > 0:
        return requested
    return max(1, (os.cpu_count() or 1) // max(1, workers * concurrency))


def configure_torch_threads(workers: int, requested: int = 0) -> int:
    import torch

    threads = torch_threads_for(workers, requested)
    torch.set_num_threads(threads)
    return threads
