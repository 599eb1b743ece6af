"""Which runtime serves the model (``MOBILE_MM_RUNTIME`` / ``serve --runtime``), and its bundle.

- ``pytorch`` (default): the engine's own loader, eager PyTorch.
- ``onnxruntime``: an export bundle on ONNX Runtime (``onnx_runtime_model.py``). The bundle is
  ``MOBILE_MM_BUNDLE`` (``serve --bundle DIR``) or, without one, the selected model exported at
  the served quantization by ``export/pipeline.py`` (validation included) into
  ``<data_dir>/bundles/onnx-<quantization>-<id>`` on the first start and reused after it; the id
  hashes the model's manifest, the bundle format version, this package's version and the
  exporter's source files, so a new model, a new release or a changed exporter (whose graphs may
  differ) gets a new bundle rather than a stale one. Workers starting together export once (a
  file lock).

Either way the bundle is verified before a graph is loaded, like a PyTorch model directory:
the manifest's signature when ``MOBILE_MM_MANIFEST_SIGNING_KEY`` is set, the size and sha256 of
every file it lists, and every file the runtime reads (``bundle.json``, ``tokenizer.json``, the
graphs) must be listed. Anything else is refused with the model loader's codes
(``MODEL_INTEGRITY_FAILED``, ``MODEL_NOT_FOUND``, ``MODEL_MANIFEST_INVALID``,
``QUANTIZATION_UNAVAILABLE``); the engine reports them on ``/ready`` and ``/health`` and counts
them in ``model_load_failures_total``; so is a bundle of another format version than this
release decodes (``MODEL_MANIFEST_INVALID``: export it again). The runtime is the
``model.runtime`` attribute of the ``model_load`` span and the ``runtime`` label of
``model_info``; ``MOBILE_MM_ONNX_WEIGHTS`` (packed or float) says how the sessions hold a
quantized bundle's weights (``onnx_sessions.py``), the ``model.onnx_weights`` attribute of the
build stage.

Example::

    app = create_app(settings)       # its default loader is load_model (what ``serve`` runs)
    bundle = ensure_bundle(settings)                        # the directory the server will load
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry import trace

from mobile_multimodal import export as export_package
from mobile_multimodal.export.bundle import BUNDLE_FILE, BUNDLE_VERSION, MANIFEST_FILE, TOKENIZER_FILE
from mobile_multimodal.export.decode import BundleVersionError, check_bundle_version
from mobile_multimodal.export.validate import DEFAULT_EXAMPLES
from mobile_multimodal.model.checkpoint import check_files
from mobile_multimodal.model.ctc_lm import LmReader
from mobile_multimodal.model.llm import MobileMultiModalLLM, resolve_model_dir
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.observability.identity import service_version
from mobile_multimodal.observability.tracing import stage
from mobile_multimodal.serving.engine import ServableModel, default_loader, onnx_threads_for
from mobile_multimodal.serving.onnx_runtime_model import OnnxRuntimeModel
from mobile_multimodal.settings import Settings
from mobile_multimodal.training.ocr_lm import cached_ocr_reader

_log = logging.getLogger(__name__)
BUNDLES_DIR = "bundles"
OCR_LM_DIR = "ocr_lm"  # MOBILE_MM_OCR_DECODING=lm: the fitted language model, per charset


def load_model(settings: Settings) -> ServableModel:
    """The engine's model loader for ``settings.runtime`` (see the module docstring)."""
    trace.get_current_span().set_attribute("model.runtime", settings.runtime)
    if settings.runtime == "pytorch":
        llm = default_loader(settings)
        if isinstance(llm, MobileMultiModalLLM):
            # from_pretrained attached the directory's own language model, if it ships one
            llm.ocr_reader = _ocr_reader(settings, llm.tokenizer, llm.ocr_reader)
        return llm
    bundled = load_onnx_runtime_model(settings)
    # tasks.ocr's decoding: the bundle's language model, None for greedy
    bundled.ocr_reader = _ocr_reader(settings, bundled.bundle.tokenizer, bundled.bundle.ocr_reader)
    return bundled


def _ocr_reader(settings: Settings, tokenizer: Any, shipped: LmReader | None) -> LmReader | None:
    """How the served model reads text lines (``MOBILE_MM_OCR_DECODING``): ``auto`` with the
    language model the model directory or bundle ships (``shipped``, read with it) and greedily
    when it ships none; ``lm`` with the shipped one, or one fitted on the first start and read
    from <data_dir>/ocr_lm after it (``training/ocr_lm.py``; the ``ocr_lm`` stage of the
    ``model_load`` trace); ``greedy`` greedily."""
    if settings.ocr_decoding == "greedy":
        return None
    if shipped is not None or settings.ocr_decoding == "auto":
        return shipped
    with stage("ocr_lm", {"model.ocr_decoding": "lm"}):
        return cached_ocr_reader(tokenizer, settings.data_dir / OCR_LM_DIR, log=_log.warning)


def load_onnx_runtime_model(
    settings: Settings, export_examples: int | None = DEFAULT_EXAMPLES
) -> OnnxRuntimeModel:
    directory = ensure_bundle(settings, export_examples)
    with stage("verify", {"model.runtime": "onnxruntime", "model.bundle": str(directory)}):
        manifest = verify_bundle(directory, settings.manifest_signing_key)
    if manifest.get("quantization") != settings.quantization:
        raise ModelLoadError(
            f"the bundle {directory} is {manifest.get('quantization')}, but MOBILE_MM_QUANTIZATION "
            f"(--quantization) asks for {settings.quantization}",
            code="QUANTIZATION_UNAVAILABLE",
        )
    with stage("build", {"model.runtime": "onnxruntime", "model.onnx_weights": settings.onnx_weights}):
        return OnnxRuntimeModel.open(
            directory,
            manifest,
            threads=onnx_threads_for(settings.workers, settings.torch_threads, settings.batch_concurrency),
            source_model_dir=_source_dir(settings),
            float_weights=settings.onnx_weights == "float",
        )


# ---- the bundle --------------------------------------------------------------------------------
def _source_dir(settings: Settings) -> Path | None:
    """The PyTorch release of the served quantization (its fp32 parent is the reference)."""
    try:
        return resolve_model_dir(settings.model, settings.quantization)
    except ModelLoadError:
        return None


def default_bundle_dir(settings: Settings) -> Path:
    """Where the first start exports the selected model: one directory per model, precision,
    bundle format and release."""
    source = resolve_model_dir(settings.model, settings.quantization)  # ModelLoadError if absent
    digest = hashlib.sha256((source / MANIFEST_FILE).read_bytes())
    digest.update(f"bundle {BUNDLE_VERSION}, mobile-multimodal-llm {service_version()}".encode())
    # and the exporter's own code: within one release (a checkout between tags) the graphs it
    # writes can change, and a bundle written by an older exporter must not be reused silently
    for code in sorted(Path(export_package.__file__).parent.glob("*.py")):
        digest.update(code.name.encode() + b"\0" + code.read_bytes())
    return settings.data_dir / BUNDLES_DIR / f"onnx-{settings.quantization}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _export_lock(directory: Path) -> Iterator[None]:
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


def ensure_bundle(settings: Settings, export_examples: int | None = DEFAULT_EXAMPLES) -> Path:
    """``settings.bundle``, or the default bundle directory, exported there first when absent
    (``export_examples`` held-out examples per task in its validation)."""
    if settings.bundle is not None:
        if not (settings.bundle / MANIFEST_FILE).is_file():
            raise ModelLoadError(
                f"no {MANIFEST_FILE} in the bundle {settings.bundle} (MOBILE_MM_BUNDLE / --bundle)",
                code="MODEL_NOT_FOUND",
            )
        return settings.bundle
    directory = default_bundle_dir(settings)
    with _export_lock(directory):
        if not (directory / MANIFEST_FILE).is_file():
            _export(settings, directory, export_examples)
    return directory


def _export(settings: Settings, directory: Path, examples: int | None) -> None:
    from mobile_multimodal.errors import ExportError
    from mobile_multimodal.export.pipeline import export_model

    with stage("export_bundle", {"model.runtime": "onnxruntime", "model.bundle": str(directory)}):
        try:
            export_model(
                settings.model,
                platform="android",
                fmt="onnx",
                quantization=settings.quantization,
                out=directory,
                validation_examples=examples,
                overwrite=True,  # a directory without a manifest is an interrupted export's
            )
        except ExportError as exc:
            raise ModelLoadError(
                f"exporting {settings.model!r} ({settings.quantization}) to ONNX for ONNX Runtime "
                f"failed: {exc} ({exc.code})",
                code="MODEL_LOAD_FAILED",
            ) from exc


def verify_bundle(directory: Path, signing_key: str | None) -> dict[str, Any]:
    """The bundle's manifest, once its signature (with a key) and every file check out."""
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"no {MANIFEST_FILE} in the bundle {directory}", code="MODEL_NOT_FOUND") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {exc}", code="MODEL_MANIFEST_INVALID") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ModelLoadError(f"{path} lists no files", code="MODEL_MANIFEST_INVALID")
    if manifest.get("format") != "onnx":
        raise ModelLoadError(
            f"the bundle {directory} is {manifest.get('format')!r}; ONNX Runtime serves 'onnx' bundles",
            code="MODEL_MANIFEST_INVALID",
        )
    check_files(directory, manifest, signing_key, what="bundle")
    listed = {str(f.get("path")) for f in manifest["files"]}
    description = json.loads((directory / BUNDLE_FILE).read_text()) if BUNDLE_FILE in listed else {}
    try:  # an older release's export: its graphs take other inputs than this release feeds
        check_bundle_version(description, directory)
    except BundleVersionError as exc:
        raise ModelLoadError(str(exc), code="MODEL_MANIFEST_INVALID") from exc
    read = {BUNDLE_FILE, TOKENIZER_FILE, *(g["file"] for g in description.get("graphs", {}).values())}
    language_model = description.get("tasks", {}).get("ocr", {}).get("language_model")
    if language_model:  # the OCR reader's language model (tasks.ocr.decode ctc_prefix_beam_lm)
        read.add(str(language_model["file"]))
    unlisted = sorted(read - listed)
    if unlisted:
        raise ModelLoadError(
            f"the manifest of {directory} does not cover {', '.join(unlisted)}: refusing to load "
            "files nobody vouches for",
            code="MODEL_INTEGRITY_FAILED",
        )
    if manifest.get("validation", {}).get("passed") is False:
        raise ModelLoadError(f"the bundle {directory} failed its validation", code="MODEL_MANIFEST_INVALID")
    return manifest
