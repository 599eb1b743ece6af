"""The inference engine: loads the model once, warms it up, and runs requests through the batcher.

The model lives on one dedicated worker thread (torch releases the GIL while it computes), so the
event loop keeps answering ``/alive``, ``/ready`` and ``/metrics`` during inference, and the model
is never called from two threads at once. Loading runs in that thread too, in the background: the
service answers ``/alive`` at once and ``/ready`` with 503 until load *and* warm-up succeeded.

A request that gives up (timeout, or the client went away) sets its job's ``cancelled`` event;
the decoder reads it before every token, so an abandoned job frees the model thread at its next
step instead of running to the end, and shutdown never waits for work nobody wants.

Example::

    engine = InferenceEngine(settings, loader=lambda s: MobileMultiModalLLM.from_pretrained(s.model))
    await engine.start()          # returns at once; engine.state goes loading -> ready | failed
    await engine.wait_ready()
    outcome = await engine.infer("captioning", Job(image=img), max_tokens=32)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from opentelemetry.context import Context

from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.serving.batcher import BatchOutcome, DynamicBatcher
from mobile_multimodal.serving.errors import ErrorCode
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.settings import Settings

log = logging.getLogger(__name__)

EngineState = Literal["loading", "ready", "failed", "stopped"]


class ServableModel(Protocol):
    """What the engine needs of a model (``MobileMultiModalLLM`` provides it)."""

    quantization: str
    tokenizer: Any  # .encode(text) -> ids, .count(text, stop_after) -> int, .prompt(task, question) -> ids

    @property
    def max_question_tokens(self) -> int: ...
    @property
    def max_text_tokens(self) -> int: ...
    def generate_captions(
        self,
        images: list[Any],
        max_tokens: int = 32,
        stop: Sequence[threading.Event] | None = None,
        confidences: list[float] | None = None,
    ) -> list[str]: ...
    def extract_texts(self, images: list[Any], confidences: list[float] | None = None) -> list[str]: ...
    def answer_questions(
        self,
        images: list[Any],
        questions: list[str],
        max_tokens: int = 8,
        stop: Sequence[threading.Event] | None = None,
        confidences: list[float] | None = None,
    ) -> list[str]: ...
    def get_image_embeddings(self, images: list[Any]) -> np.ndarray: ...
    def get_text_embeddings(self, texts: list[str]) -> np.ndarray: ...
    def get_model_info(self) -> dict[str, Any]: ...


ModelLoader = Callable[[Settings], ServableModel]
T = TypeVar("T")


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


def configure_torch_threads(workers: int, requested: int = 0) -> int:
    import torch

    threads = torch_threads_for(workers, requested)
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class Job:
    """One request's inputs (the image is already decoded and validated). ``cancelled`` is set
    when its request gave up: the model stops working on it at its next decode step."""

    image: Any
    question: str | None = None
    texts: tuple[str, ...] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


BatchKey = tuple[str, int]  # (task, max_tokens): only these requests can share a forward pass


def run_batch(model: ServableModel, key: BatchKey, jobs: list[Job]) -> list[dict[str, Any]]:
    """Run one batch of one task through the model; one result dict per job, in order.

    Jobs cancelled before the batch starts are not run at all (their result is an empty dict
    that nobody reads: their requests have already been answered)."""
    live = [i for i, j in enumerate(jobs) if not j.cancelled.is_set()]
    results: list[dict[str, Any]] = [{} for _ in jobs]
    if live:
        for i, result in zip(live, _run_jobs(model, key, [jobs[i] for i in live]), strict=True):
            results[i] = result
    return results


def _with_confidence(field: str, outputs: list[str], confidences: list[float]) -> list[dict[str, Any]]:
    """One result per output; "confidence" only where the model filled one in (a model that
    does not measure it answers without)."""
    if len(confidences) != len(outputs):
        return [{field: o} for o in outputs]
    return [{field: o, "confidence": round(c, 6)} for o, c in zip(outputs, confidences, strict=True)]


def retrieval_margin(scores: np.ndarray) -> float:
    """Retrieval confidence: best minus runner-up cosine score, clamped to [0, 1] (the cosine
    itself when there is one text)."""
    ranked = np.sort(scores)[::-1]
    margin = float(ranked[0] - ranked[1]) if len(ranked) > 1 else float(ranked[0])
    return min(1.0, max(0.0, margin))


def _run_jobs(model: ServableModel, key: BatchKey, jobs: list[Job]) -> list[dict[str, Any]]:
    task, max_tokens = key
    images = [j.image for j in jobs]
    stop = [j.cancelled for j in jobs]
    confidences: list[float] = []
    if task == "captioning":
        captions = model.generate_captions(images, max_tokens=max_tokens, stop=stop, confidences=confidences)
        return _with_confidence("caption", captions, confidences)
    if task == "ocr":
        return _with_confidence("text", model.extract_texts(images, confidences=confidences), confidences)
    if task == "vqa":
        questions = [j.question or "" for j in jobs]
        answers = model.answer_questions(
            images, questions, max_tokens=max_tokens, stop=stop, confidences=confidences
        )
        return _with_confidence("answer", answers, confidences)
    if task == "retrieval":
        image_emb = model.get_image_embeddings(images)  # (N, D), L2-normalised
        all_texts = [t for j in jobs for t in (j.texts or ())]
        text_emb = model.get_text_embeddings(all_texts) if all_texts else None  # (T, D)
        results: list[dict[str, Any]] = []
        offset = 0
        for i, job in enumerate(jobs):
            if not job.texts:
                results.append({"embedding": [float(x) for x in image_emb[i]]})
                continue
            assert text_emb is not None
            scores = text_emb[offset : offset + len(job.texts)] @ image_emb[i]  # (len(texts),)
            offset += len(job.texts)
            best = int(np.argmax(scores))
            results.append(
                {
                    "scores": [float(s) for s in scores],
                    "best": job.texts[best],
                    "best_index": best,
                    "confidence": round(retrieval_margin(scores), 6),
                }
            )
        return results
    raise ValueError(f"unknown task {task!r}")


class ModelLoadFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
        self.settings = settings
        self._loader = loader
        self._on_loaded = on_loaded
        self._on_load_failed = on_load_failed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.state: EngineState = "loading"
        self.model: ServableModel | None = None
        self.info: dict[str, Any] = {}
        self.error: ModelLoadFailure | None = None
        self.warmed_up = False
        self.load_seconds: float | None = None
        self.probe = ProbeCase.default()
        self.batcher: DynamicBatcher[BatchKey, Job, dict[str, Any]] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            executor=self._executor,
            label=lambda key: key[0],
            arriving=lambda: self.arriving,
        )
        # Requests past the route's entry but not yet queued (decoding their image).
        self.arriving = 0
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
        await self.run_in_model_thread(swap)
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
            # A full batch too, so the first busy moment doesn't pay for allocation.
            run_batch(model, ("captioning", 32), [Job(image)] * max_batch_size)
        except Exception as exc:
            raise ModelLoadFailure(ErrorCode.MODEL_LOAD_FAILED, f"warm-up inference failed: {exc}") from exc

    # --- serving ------------------------------------------------------------------------------
    def _run_batch(self, key: BatchKey, jobs: list[Job]) -> list[dict[str, Any]]:
        if self.model is None:
            raise RuntimeError("the model is not loaded")
        self.batches_running += 1
        try:
            return run_batch(self.model, key, jobs)
        finally:
            self.batches_running -= 1
            self.last_batch_end = time.perf_counter()

    def idle_for(self) -> float:
        """Seconds since the model thread last served a request; 0 while one is queued, arriving
        or running (background work waits for a positive value)."""
        if self.batches_running or self.batcher.depth or self.arriving:
            return 0.0
        return time.perf_counter() - self.last_batch_end

    async def run_in_model_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model's thread (queued behind whatever batch runs now)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @staticmethod
    def batch_key(task: str, max_tokens: int) -> BatchKey:
        return (task, max_tokens if task in ("captioning", "vqa") else 0)

    async def infer(self, task: str, job: Job, max_tokens: int) -> BatchOutcome[dict[str, Any]]:
        """Queue one job; raises QueueFullError, BatcherClosedError, TimeoutError or the model's error."""
        key = self.batch_key(task, max_tokens)
        try:
            return await self.batcher.submit(key, job, timeout=self.settings.request_timeout_s)
        except BaseException:
            # timed out, the client went away (CancelledError) or the batch failed: either way
            # nobody waits for this job any more, so its decoding stops at the next token
            job.cancelled.set()
            raise

    def describe(self) -> dict[str, str]:
        """name, version, quantization of the loaded model (what responses report)."""
        return {
            "name": str(self.info.get("name", "mobile-multimodal-llm")),
            "version": str(self.info.get("version", "unknown")),
            "quantization": str(self.info.get("quantization", self.settings.quantization)),
        }
