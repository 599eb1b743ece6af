"""The served model on ONNX Runtime: an export bundle's graphs behind the engine's model interface.

``mobile-mm serve --runtime onnxruntime`` serves what ships to phones: the bundle's ONNX graphs,
driven by ``export/decode.py`` from the bundle's own ``bundle.json`` and ``tokenizer.json`` (the
contract a mobile app follows), so every request exercises the exported artifact. This class
offers exactly the methods the engine, the canary, the shadow comparison and the health probe
call on ``MobileMultiModalLLM`` (``generate_captions``, ``answer_questions``, ``extract_texts``,
``get_image_embeddings``, ``get_text_embeddings``, ``get_model_info``, the tokenizer's
``encode``/``count``/``prompt``, the prompt limits), with the same stop signals and confidences,
so nothing above it changes.

Phones run the graphs at batch 1; the ONNX bundle's ``decoder_step`` also takes any batch, and
a batch of captions or answers is decoded together (``export/batch_decode.py``: one step call
for all its rows, rows leaving as they finish), each row computing what the bundle's own loop
computes for it -- the answers the export's validation scored (a decoder_step of batch 1 only
is decoded row by row through that loop). The sessions
hold 2-bit weights in 4-bit containers (``onnx_sessions.py``: ONNX Runtime has no fast 2-bit
kernel on x64; the same codes, exact); ``widen_2bit=False`` runs the shipped bytes unchanged.
Each answer's KV cache stays in buffers bound to the decoder session (IO binding: no allocation
per token, only the new token's keys/values copied into their slot; the plain contract's values
bit for bit, tested).

``model_dir`` is the bundle directory and ``manifest`` its ``manifest.json``: the integrity loop
re-hashes the bundle's files. ``source_model_dir`` is the PyTorch release the bundle was exported
from (when known): the fp32 reference of a quantized bundle sits beside it (``reference.py``).

Example::

    model = OnnxRuntimeModel.open(Path("bundle"), manifest, threads=1)
    model.generate_captions([image], max_tokens=32)       # ['a large red circle in the center']
    model.get_model_info()["runtime"]                     # 'onnxruntime'
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobile_multimodal.export.batch_decode import (
    batch_image_embeddings,
    batch_image_tokens,
    batch_line_log_probs,
    batch_text_embeddings,
    batch_token_embeddings,
    greedy_batch,
)
from mobile_multimodal.export.decode import BundleModel, load_bundle, log_softmax
from mobile_multimodal.model.ctc_lm import LmReader, ocr_decoding_of
from mobile_multimodal.model.domain import CAPTION_TOKENS, DomainCheck, check_images, prefix_score
from mobile_multimodal.model.llm import DEFAULT_ANSWER_TOKENS, PROMPT_MARKERS
from mobile_multimodal.model.model_errors import ModelLoadError, check_question_tokens
from mobile_multimodal.serving.onnx_sessions import BundleSessions

RUNTIME = "onnxruntime"
TASKS = ["captioning", "ocr", "vqa", "retrieval"]


class BundleTextTokenizer:
    """The tokenizer calls serving makes (prompt limits, OpenAI usage counts), on the bundle's
    ``tokenizer.json``: the same words and ids the graphs are fed."""

    def __init__(self, model: BundleModel) -> None:
        self._model = model
        self._tokens = model.tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokens.encode(text)

    def count(self, text: str, stop_after: int | None = None) -> int:
        """How many ids ``encode(text)`` gives; with ``stop_after``, counting stops one past it."""
        n = 0
        for _ in self._tokens.split.finditer(text.lower() if self._tokens.lowercase else text):
            n += 1
            if stop_after is not None and n > stop_after:
                break
        return n

    def prompt(self, task: str, question: str | None = None) -> list[int]:
        return self._model.prompt(task, question or "")

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokens.decode(ids)


def _scores(
    rows: list[list[float]], max_tokens: int, confidences: list[float] | None, domain: list[float] | None
) -> None:
    """Fill ``confidences`` (exp of each row's mean token log-probability) and ``domain`` (its
    in-domain score, for a budget that decodes the check's caption) from the rows' log-probs."""
    if confidences is not None:
        confidences[:] = [math.exp(sum(r) / len(r)) if r else 1.0 for r in rows]
    if domain is not None and max_tokens >= CAPTION_TOKENS:
        domain[:] = [prefix_score(r) for r in rows]


def _stopped(stop: Sequence[threading.Event] | None, i: int) -> bool:
    return stop is not None and stop[i].is_set()


class OnnxRuntimeModel:
    """See the module docstring."""

    runtime = RUNTIME
    device = "cpu"

    def __init__(
        self,
        bundle_model: BundleModel,
        manifest: dict[str, Any],
        source_model_dir: Path | None = None,
    ) -> None:
        self.bundle = bundle_model
        self.spec = bundle_model.spec
        self.tokenizer = BundleTextTokenizer(bundle_model)
        self.quantization = str(self.spec["model"]["quantization"])
        self.manifest = manifest
        self.model_dir = bundle_model.bundle.directory
        self.source_model_dir = source_model_dir
        self.widened_2bit = 0  # 2-bit MatMulNBits served from 4-bit containers (onnx_sessions.py)
        self.float_matmuls = 0  # MatMulNBits run as float MatMuls (MOBILE_MM_ONNX_WEIGHTS=float)
        # as MobileMultiModalLLM's: None reads greedily; the bundle's own decoding (tasks.ocr) by default
        self.ocr_reader: LmReader | None = bundle_model.ocr_reader
        # decoder_step takes a batch of rows (bundles exported with its batch axis dynamic)
        batches = getattr(bundle_model.runner, "batches", None)
        self.batched = bool(batches is not None and batches("decoder_step"))

    @classmethod
    def open(
        cls,
        directory: Path,
        manifest: dict[str, Any],
        *,
        threads: int = 1,
        source_model_dir: Path | None = None,
        widen_2bit: bool = True,
        float_weights: bool = False,
    ) -> OnnxRuntimeModel:
        """One ONNX Runtime session per graph of the bundle at ``directory`` (already verified
        against ``manifest`` by the caller: ``runtime_loader.verify_bundle``)."""
        bundle = load_bundle(directory)
        files = {name: g["file"] for name, g in bundle.description["graphs"].items()}
        sessions = BundleSessions(
            directory, files, threads, widen_2bit=widen_2bit, float_weights=float_weights
        )
        try:
            bundle_model = BundleModel(bundle, sessions)
        except (ValueError, KeyError, OSError, EOFError, zlib.error) as exc:  # tasks.ocr's language model
            raise ModelLoadError(
                f"the bundle {directory} describes an OCR decoding this release cannot follow: {exc}",
                code="MODEL_MANIFEST_INVALID",
            ) from exc
        model = cls(bundle_model, manifest, source_model_dir)
        model.widened_2bit = sum(sessions.widened.values())
        model.float_matmuls = sum(sessions.dequantized.values())
        return model

    # ---- limits (as MobileMultiModalLLM states them) -----------------------------------------
    @property
    def max_question_tokens(self) -> int:
        question = self.spec["question"]
        if question["fused_into_vision"]:
            return int(question["max_len"])
        return int(self.spec["kv_cache"]["max_len"]) - PROMPT_MARKERS - (DEFAULT_ANSWER_TOKENS + 1)

    @property
    def max_text_tokens(self) -> int:
        return int(self.spec["text"]["max_len"])

    def check_question(self, question: str) -> None:
        check_question_tokens(self.tokenizer, question, self.max_question_tokens)

    # ---- inference ------------------------------------------------------------------------
    def _decode_rows(
        self,
        task: str,
        images: Sequence[Any],
        questions: Sequence[str] | None,
        max_tokens: int,
        stop: Sequence[threading.Event] | None,
        confidences: list[float] | None,
        domain: list[float] | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> list[str]:
        """Greedy answers, one row at a time through decode.BundleModel (the bundle's loop).
        ``domain``, ``embeddings``: as ``generate_captions``'s."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if stop is not None and len(stop) != len(images):
            raise ValueError(f"{len(stop)} stop signals for {len(images)} images")
        if self.batched and len(images) > 1:
            return self._decode_batch(
                task, images, questions, max_tokens, stop, confidences, domain, embeddings
            )
        texts: list[str] = []
        rows: list[list[float]] = []
        encoded: list[np.ndarray] = []  # each row's image tokens, for the domain check's embeddings
        for i, image in enumerate(images):
            question = questions[i] if questions is not None else ""
            log_probs: list[float] = []
            ids: list[int] = []
            if not _stopped(stop, i):  # a request that gave up before its row runs costs nothing
                fused = bool(self.spec["tasks"][task].get("question"))
                tokens = self.bundle.image_tokens(image, question if fused else None)
                encoded.append(tokens[0])
                row_stop = (lambda e=stop[i]: e.is_set()) if stop is not None else None
                ids = self.bundle.greedy(
                    tokens, self.bundle.prompt(task, question), max_tokens, stop=row_stop, log_probs=log_probs
                )
            texts.append(self.tokenizer.decode(ids[:max_tokens]))
            rows.append(log_probs)
        _scores(rows, max_tokens, confidences, domain)
        if domain and embeddings is not None and len(encoded) == len(images):
            embeddings[:] = list(batch_token_embeddings(self.bundle, np.stack(encoded)))
        return texts

    def _decode_batch(
        self,
        task: str,
        images: Sequence[Any],
        questions: Sequence[str] | None,
        max_tokens: int,
        stop: Sequence[threading.Event] | None,
        confidences: list[float] | None,
        domain: list[float] | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> list[str]:
        """The rows' greedy answers, decoded together (``greedy_batch``); a row whose request
        gave up before it started costs nothing, as in ``_decode_rows``."""
        fused = bool(self.spec["tasks"][task].get("question"))
        live = [i for i in range(len(images)) if not _stopped(stop, i)]
        asked = [questions[i] if questions is not None else "" for i in range(len(images))]
        tokens = batch_image_tokens(
            self.bundle, [images[i] for i in live], [asked[i] if fused else None for i in live]
        )
        prompts = [self.bundle.prompt(task, asked[i]) for i in live]
        stops = [(lambda e=stop[i]: e.is_set()) for i in live] if stop is not None else None
        log_probs: list[list[float]] = [[] for _ in live]
        answers = greedy_batch(self.bundle, tokens, prompts, max_tokens, stops, log_probs)
        ids: list[list[int]] = [[] for _ in images]
        rows: list[list[float]] = [[] for _ in images]
        for row, i in enumerate(live):
            ids[i] = answers[row]
            rows[i] = log_probs[row]
        _scores(rows, max_tokens, confidences, domain)
        if domain and embeddings is not None and len(live) == len(images):  # a stopped row has none
            embeddings[:] = list(batch_token_embeddings(self.bundle, tokens))
        return [self.tokenizer.decode(row[:max_tokens]) for row in ids]

    def generate_captions(
        self,
        images: Sequence[Any],
        max_tokens: int = 32,
        stop: Sequence[threading.Event] | None = None,
        confidences: list[float] | None = None,
        domain: list[float] | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> list[str]:
        """``domain`` (a budget of at least ``CAPTION_TOKENS``) and ``embeddings``: filled with each
        image's in-domain score and embedding from this very decode, as
        ``MobileMultiModalLLM.generate_captions``."""
        return self._decode_rows(
            "captioning", images, None, max_tokens, stop, confidences, domain, embeddings
        )

    def answer_questions(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        max_tokens: int = DEFAULT_ANSWER_TOKENS,
        stop: Sequence[threading.Event] | None = None,
        confidences: list[float] | None = None,
    ) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        for q in questions:  # before any graph runs, as the PyTorch model refuses them
            self.check_question(q)
        return self._decode_rows("vqa", images, questions, max_tokens, stop, confidences)

    def extract_texts(self, images: Sequence[Any], confidences: list[float] | None = None) -> list[str]:
        texts: list[str] = []
        means: list[float] = []
        for log_probs in batch_line_log_probs(self.bundle, images) if images else ():
            normalised = log_softmax(log_probs)
            if self.ocr_reader is not None:  # MOBILE_MM_OCR_DECODING (model/ctc_lm.py)
                texts.append(self.ocr_reader.read(normalised, self.bundle.tokenizer.charset))
            else:
                texts.append(self.bundle.tokenizer.decode_ctc(log_probs.argmax(-1).tolist()))
            if confidences is not None:  # the CTC best path's mean log-probability per frame
                means.append(float(normalised.max(-1).mean()))
        if confidences is not None:
            confidences[:] = [math.exp(m) for m in means]
        return texts

    def get_image_embeddings(self, images: Sequence[Any]) -> np.ndarray:
        if not images:
            raise ValueError("images must not be empty")
        return batch_image_embeddings(self.bundle, images)

    def get_text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            raise ValueError("texts must not be empty")
        return batch_text_embeddings(self.bundle, texts)

    def out_of_domain(
        self,
        images: Sequence[Any],
        scores: Sequence[float] | None = None,
        captions: Sequence[str] | None = None,
        embeddings: Sequence[np.ndarray] | None = None,
    ) -> tuple[list[bool | None], list[float], list[float]]:
        """As ``MobileMultiModalLLM.out_of_domain``, with the thresholds the bundle carries
        (``bundle.json``'s ``domain_check``, from the model it was exported from)."""
        check = DomainCheck.from_manifest(self.spec)
        return check_images(self, check, images, scores, captions, embeddings)

    # ---- the PyTorch API's single-item forms (the Python API, the health probe) -------------
    def generate_caption(self, image: Any, max_tokens: int = 32) -> str:
        return self.generate_captions([image], max_tokens)[0]

    def answer_question(self, image: Any, question: str, max_tokens: int = DEFAULT_ANSWER_TOKENS) -> str:
        return self.answer_questions([image], [question], max_tokens)[0]

    def extract_text(self, image: Any) -> str:
        return self.extract_texts([image])[0]

    # ---- introspection ----------------------------------------------------------------------
    def component_memory_bytes(self) -> dict[str, int]:
        """Bytes of each graph as its ONNX Runtime session was given it (2-bit weights widened to
        4-bit containers: more than the file; the vision encoder twice, in 'vision' and in 'ocr');
        the graph files' sizes for a runner that does not say."""
        given = getattr(self.bundle.runner, "graph_bytes", None)
        if isinstance(given, dict) and given:
            return {str(name): int(n) for name, n in given.items()}
        return {
            name: (self.model_dir / g["file"]).stat().st_size
            for name, g in self.spec["graphs"].items()
            if (self.model_dir / g["file"]).is_file()
        }

    @property
    def peak_cache_bytes(self) -> int:
        """The largest KV cache a decode has held: one answer's, or a whole batch's when its rows
        are decoded together."""
        return int(getattr(self.bundle.runner, "peak_cache_bytes", 0))

    def size_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.manifest.get("files", []))

    def get_model_info(self) -> dict[str, Any]:
        model = self.spec["model"]
        return {
            "name": model["name"],
            "version": model["version"],
            "quantization": self.quantization,
            "runtime": RUNTIME,
            "format": self.spec.get("format", "onnx"),
            "matmul_nbits_2bit_widened": self.widened_2bit,
            "matmul_nbits_as_float": self.float_matmuls,
            "ocr_decoding": ocr_decoding_of(self),
            "size_bytes": self.size_bytes(),
            "components": self.component_memory_bytes(),
            "tasks": list(TASKS),
            "validation": self.manifest.get("validation", {}).get("tasks"),
            "model_dir": str(self.model_dir),
            "source_model_dir": str(self.source_model_dir) if self.source_model_dir else None,
        }
