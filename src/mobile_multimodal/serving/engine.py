"""The inference engine: loads the model once, warms it up, and admits requests into the batcher.

The model lives on one dedicated worker thread (torch releases the GIL while it computes), so the
event loop keeps answering ``/alive``, ``/ready`` and ``/metrics`` during inference, and the model
is never called from two threads at once. Loading runs in that thread too, in the background: the
service answers ``/alive`` at once and ``/ready`` with 503 until load *and* warm-up succeeded.

Requests enter through :meth:`InferenceEngine.admit`, the only way in: it refuses
(:class:`~mobile_multimodal.serving.admission.EngineOverloaded`) when the queue holds
``MOBILE_MM_MAX_QUEUE`` requests or when the work ahead would make the request wait longer than
its budget (admission.py: the drain rate is measured from every batch). :meth:`refusal` is the
same check without queueing, cheap enough to run before a request's body is read.
:meth:`arrival` marks a request that is on its way (decoding its image), so the batcher waits
for it to fill a batch.

With ``MOBILE_MM_BATCHING=continuous`` (either runtime) the batcher is a
:class:`~mobile_multimodal.serving.continuous_batcher.ContinuousBatcher` instead: captions and
answers join and leave the running decode at every token, OCR and retrieval run between steps.

A request that gives up (timeout, or the client went away) sets its job's ``cancelled`` event;
the decoder reads it before every token, so an abandoned job frees the model thread at its next
step instead of running to the end, and shutdown never waits for work nobody wants.

Example::

    engine = InferenceEngine(settings, loader=lambda s: MobileMultiModalLLM.from_pretrained(s.model))
    await engine.start()          # returns at once; engine.state goes loading -> ready | failed
    await engine.wait_ready()
    with engine.arrival():
        job = Job(image=decode(...))
    outcome = await engine.admit("captioning", job, max_tokens=32)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from opentelemetry.context import Context

from mobile_multimodal.errors import ErrorCode
from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.serving.admission import Admission, EngineOverloaded, Refusal, wait_budget_s
from mobile_multimodal.serving.batch_jobs import (
    BatchKey,
    Job,
    ServableModel,
    batch_key,
    retrieval_margin,
    run_batch,
)
from mobile_multimodal.serving.batcher import BatchOutcome, DynamicBatcher
from mobile_multimodal.serving.continuous_batcher import ContinuousBatcher, warm_up_decoding
from mobile_multimodal.serving.model_loading import (
    ModelLoader,
    ModelLoadFailure,
    configure_torch_threads,
    default_loader,
    onnx_threads_for,
    resolve_device,
    torch_threads_for,
)
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.settings import MAX_CONCURRENT_BATCHES, Settings

# The engine's vocabulary, importable from here as before the split into batch_jobs.py and
# model_loading.py.
__all__ = [
    "BatchKey",
    "EngineState",
    "InferenceEngine",
    "Job",
    "ModelLoadFailure",
    "ModelLoader",
    "ServableModel",
    "configure_torch_threads",
    "default_loader",
    "onnx_threads_for",
    "resolve_device",
    "retrieval_margin",
    "run_batch",
    "torch_threads_for",
]

log = logging.getLogger(__name__)

EngineState = Literal["loading", "ready", "failed", "stopped"]
T = TypeVar("T")


class InferenceEngine:
    """Owns the model, its worker thread, the batcher, and the readiness state."""

    def __init__(
        self,
        settings: Settings,
        loader: ModelLoader = default_loader,
        *,
        on_loaded: Callable[[ServableModel, float], None] | None = None,
        on_load_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._loader = loader
        self._on_loaded = on_loaded
        self._on_load_failed = on_load_failed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Static batches that run beside each other (settings.batch_concurrency > 1: ONNX Runtime)
        # run on threads of their own; one at a time, they run on the model thread, queued with
        # warm-up, the reload's swap and background work as ever.
        self._batch_executor = ThreadPoolExecutor(
            max_workers=MAX_CONCURRENT_BATCHES, thread_name_prefix="model-batch"
        )
        self._busy_lock = threading.Lock()
        self.state: EngineState = "loading"
        self.model: ServableModel | None = None
        self.info: dict[str, Any] = {}
        self.error: ModelLoadFailure | None = None
        self.warmed_up = False
        self.load_seconds: float | None = None
        self.probe = ProbeCase.default()
        self.batcher: DynamicBatcher[BatchKey, Job, dict[str, Any]] | ContinuousBatcher
        # Both runtimes decode continuously: the ONNX Runtime backend through the bundle's own
        # decoder_step, each row at its own position (serving/bundle_decoding.py); a bundle whose
        # decoder_step takes no batch is decoded in static batches by the same batcher.
        self.continuous = settings.batching == "continuous"
        if self.continuous:
            self.batcher = ContinuousBatcher(
                model=lambda: self.model,
                run_single_pass=self._run_batch,
                max_rows=settings.max_batch_size,
                max_batch_size=settings.max_batch_size,
                max_queue=settings.max_queue,
                executor=self._executor,
                domain_tasks=lambda: self.settings.domain_check_tasks,
                on_batch=self._batch_drained,
                busy=self._model_busy,
            )
        else:
            self.batcher = DynamicBatcher(
                self._run_batch,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_wait_ms / 1000,
                max_queue=settings.max_queue,
                executor=self._executor,
                label=lambda key: key[0],
                arriving=lambda: self._arriving,
                on_batch=self._batch_drained,
            )
            self._set_batch_concurrency(settings)
        self.admission = Admission(
            settings.max_queue, wait_budget_s(settings.max_queue_wait_s, settings.request_timeout_s)
        )
        # Requests past the route's entry but not yet queued (decoding their image).
        self._arriving = 0
        # Background work (canary, shadow: serving/background_slices.py) runs on the model
        # thread only when no batch runs or waits; these say when that was last the case.
        self.batches_running = 0
        self.last_batch_end = 0.0
        # Called on the event loop after each successful request (task, key, job, result):
        # the shadow comparator samples from here. Must return at once.
        self.after_success: list[Callable[[str, BatchKey, Job, dict[str, Any]], None]] = []
        self._ready = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        # a reload may change the request timeout at once (reload.py); the wait budget follows it
        self._settings = settings
        self.admission.budget_s = wait_budget_s(settings.max_queue_wait_s, settings.request_timeout_s)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start loading in the background; returns at once."""
        await self.batcher.start()
        self._load_task = asyncio.create_task(self._load(), name="model-load")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the engine is ready or failed; True when ready."""
        await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    async def stop(self) -> None:
        """Finish queued requests, then release the worker thread. Requests that gave up are
        skipped if queued and stop at their next token if running, so this waits for none of them."""
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.batcher.close()
        self.state = "stopped"
        self._ready.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._batch_executor.shutdown(wait=True, cancel_futures=True)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            model = await loop.run_in_executor(self._executor, self._load_and_warm_up)
        except ModelLoadFailure as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a load failure must never take the process down
            log.exception("model load failed")
            self._fail(ModelLoadFailure(ErrorCode.MODEL_LOAD_FAILED, f"{type(exc).__name__}: {exc}"))
            return
        self.load_seconds = time.perf_counter() - start
        self.model = model
        self.warmed_up = True
        self.state = "ready"
        self._ready.set()
        log.info("model ready in %.2f s: %s", self.load_seconds, self.describe())
        if self._on_loaded is not None:
            self._on_loaded(model, self.load_seconds)

    def _fail(self, exc: ModelLoadFailure) -> None:
        self.error = exc
        self.state = "failed"
        self._ready.set()
        log.error("model load failed (%s): %s", exc.code, exc.message)
        if self._on_load_failed is not None:
            self._on_load_failed(exc.code)

    def _load_and_warm_up(self) -> ServableModel:
        """Runs on the model thread: load, then one real inference per task."""
        configure_torch_threads(self.settings.workers, self.settings.torch_threads)
        model = self._traced_load(self.settings, reload=False)
        self.info = dict(model.get_model_info())
        return model

    def _traced_load(self, settings: Settings, *, reload: bool) -> ServableModel:
        """One root span, ``model_load``, with the loader's stages (the default loader's: read,
        verify, build) and ``warm_up`` as its children; ``model.reload`` says which load it was."""
        attributes: dict[str, str | bool] = {
            "model.path": settings.model,
            "model.quantization": settings.quantization,
            "model.device": settings.device,
            "model.reload": reload,
        }
        with stage("model_load", attributes, Context()) as span:
            model = self._load_model(settings)
            span.set_attribute("model.device", str(getattr(model, "device", "cpu")))
            with stage("warm_up"):
                self._warm_up(model, settings.max_batch_size)
        return model

    def _load_model(self, settings: Settings) -> ServableModel:
        try:
            return self._loader(settings)
        except Exception as exc:
            code = str(getattr(exc, "code", "") or ErrorCode.MODEL_LOAD_FAILED)
            raise ModelLoadFailure(code, f"cannot load model {settings.model!r}: {exc}") from exc

    async def reload(self, settings: Settings) -> ServableModel:
        """Load ``settings``' model beside the served one, then swap it in; raises ModelLoadFailure
        (counted through ``on_load_failed``) and keeps serving the old model when that fails.

        The load and warm-up run on a thread of their own (traced as at start-up, with
        ``model.reload=true``), so requests keep being served meanwhile; the swap runs on the
        model thread, between two batches: a batch already running finishes on the old weights,
        the next one runs on the new."""
        start = time.perf_counter()
        try:
            model = await asyncio.to_thread(self._traced_load, settings, reload=True)
            info = dict(model.get_model_info())
        except ModelLoadFailure as exc:
            self._reload_failed(exc)
            raise
        except Exception as exc:  # a failed reload must never take the served model down
            failure = ModelLoadFailure(ErrorCode.MODEL_LOAD_FAILED, f"{type(exc).__name__}: {exc}")
            self._reload_failed(failure)
            raise failure from exc
        seconds = time.perf_counter() - start

        def swap() -> None:
            self.model, self.info, self.settings = model, info, settings

        if self.state == "loading":  # the first load still runs: it must not overwrite this one
            await self.wait_ready()
        if isinstance(self.batcher, DynamicBatcher) and settings.batch_concurrency < self.batcher.concurrency:
            self._set_batch_concurrency(settings)  # before the swap: the new model never runs twice at once
        await self.run_in_model_thread(swap)
        self._set_batch_concurrency(settings)
        if self.state == "failed":  # a reload after a failed start is the way back (no restart)
            self.error, self.warmed_up, self.state = None, True, "ready"
        self.load_seconds = seconds
        log.info("model reloaded in %.2f s: %s", seconds, self.describe())
        if self._on_loaded is not None:
            self._on_loaded(model, seconds)
        return model

    def _reload_failed(self, exc: ModelLoadFailure) -> None:
        log.error("model reload failed (%s): %s; still serving the loaded model", exc.code, exc.message)
        if self._on_load_failed is not None:
            self._on_load_failed(exc.code)

    def _warm_up(self, model: ServableModel, max_batch_size: int) -> None:
        try:
            image = self.probe.image
            run_batch(model, ("captioning", 32), [Job(image)])
            run_batch(model, ("ocr", 24), [Job(image)])
            run_batch(model, ("vqa", 8), [Job(image, question="what color is the circle ?")])
            run_batch(model, ("retrieval", 0), [Job(image, texts=("a large red circle",))])
            # A full batch too, so the first busy moment doesn't pay for allocation; its time is
            # the drain rate's first estimate until real batches are measured.
            start = time.perf_counter()
            run_batch(model, ("captioning", 32), [Job(image)] * max_batch_size)
            if self.admission.rate.seconds_per_item == 0.0:
                self.admission.rate.observe(max_batch_size, time.perf_counter() - start)
            if self.continuous:  # the step-level decode path too (a no-op for other model types)
                warm_up_decoding(model, image)
        except Exception as exc:
            raise ModelLoadFailure(ErrorCode.MODEL_LOAD_FAILED, f"warm-up inference failed: {exc}") from exc

    # --- serving ------------------------------------------------------------------------------
    def _set_batch_concurrency(self, settings: Settings) -> None:
        if isinstance(self.batcher, DynamicBatcher):
            n = settings.batch_concurrency
            self.batcher.set_concurrency(n, self._batch_executor if n > 1 else self._executor)

    def _run_batch(self, key: BatchKey, jobs: list[Job]) -> list[dict[str, Any]]:
        if self.model is None:
            raise RuntimeError("the model is not loaded")
        with self._model_busy():
            return run_batch(self.model, key, jobs, self.settings.domain_check_tasks)

    @contextmanager
    def _model_busy(self) -> Iterator[None]:
        """Around every batch or decode iteration on the model thread (idle_for reads it)."""
        with self._busy_lock:  # batches may run on several threads (batch_concurrency)
            self.batches_running += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self.batches_running -= 1
                self.last_batch_end = time.perf_counter()

    def idle_for(self) -> float:
        """Seconds since the model thread last served a request; 0 while one is queued, arriving
        or running (background work waits for a positive value)."""
        if self.batches_running or self.batcher.depth or self.batcher.running or self._arriving:
            return 0.0
        return time.perf_counter() - self.last_batch_end

    async def run_in_model_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model's thread (queued behind whatever batch runs now)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @staticmethod
    def batch_key(task: str, max_tokens: int) -> BatchKey:
        return batch_key(task, max_tokens)

    # --- admission ----------------------------------------------------------------------------
    @contextmanager
    def arrival(self) -> Iterator[None]:
        """Mark a request on its way to :meth:`admit` (decoding its image): the batcher waits
        for it to fill a batch, and background work waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self.batcher.poke()  # re-check the forming batch: one fewer is on its way

    def refusal(self, *, with_arrivals: bool = False) -> Refusal | None:
        """Why a request arriving now would be refused, or None; O(1). ``with_arrivals`` counts
        the requests still decoding as ahead too (the check before a body is read)."""
        waiting = self.batcher.depth + (self._arriving if with_arrivals else 0)
        return self.admission.refusal(self.batcher.depth, self._expected_wait_s(waiting))

    def expected_wait_s(self) -> float:
        """Seconds a request queued now would likely wait for its batch to start."""
        return self._expected_wait_s(self.batcher.depth)

    def _expected_wait_s(self, waiting: int) -> float:
        batcher = self.batcher
        if isinstance(batcher, ContinuousBatcher):
            running, running_for_s = batcher.slot_wait()
            return self.admission.expected_wait_s(waiting, running, running_for_s)
        running_for_s = time.perf_counter() - batcher.running_since if batcher.running else 0.0
        return self.admission.expected_wait_s(waiting, batcher.running, running_for_s)

    def check_admission(self, task: str) -> None:
        """Raise EngineOverloaded when a ``task`` request would be refused now (counted)."""
        refusal = self.refusal()
        if refusal is not None:
            metrics.QUEUE_REJECTIONS.labels(task).inc()
            raise EngineOverloaded(refusal)

    async def admit(self, task: str, job: Job, max_tokens: int) -> BatchOutcome[dict[str, Any]]:
        """Queue one job and wait for its result, unless admission refuses it.

        Raises EngineOverloaded (by count or by expected wait), BatcherClosedError, TimeoutError
        (MOBILE_MM_REQUEST_TIMEOUT_S) or the model's error."""
        self.check_admission(task)
        key = batch_key(task, max_tokens)
        try:
            return await self.batcher.submit(key, job, timeout=self.settings.request_timeout_s)
        except BaseException:
            # timed out, the client went away (CancelledError) or the batch failed: either way
            # nobody waits for this job any more, so its decoding stops at the next token
            job.cancelled.set()
            raise

    def _batch_drained(self, items: int, seconds: float) -> None:
        self.admission.rate.observe(items, seconds)
        metrics.QUEUE_EXPECTED_WAIT.set(self.expected_wait_s())

    def describe(self) -> dict[str, str]:
        """name, version, quantization of the loaded model (what responses report)."""
        return {
            "name": str(self.info.get("name", "mobile-multimodal-llm")),
            "version": str(self.info.get("version", "unknown")),
            "quantization": str(self.info.get("quantization", self.settings.quantization)),
        }
