"""One mobile export, end to end: ``export_model()`` (what ``mobile-mm export`` and ``POST /export`` call).

Inside the ``mobile_export`` telemetry (trace, metrics, log line) it runs the guide's six stages:

1. model_validation: load the model at the requested precision (its packed variant for int*);
2. platform_selection: the format's writer, its toolchain checked (missing -> the pip command);
3. quantization: the static-shape graphs, quantized layers mapped to their packed weights;
4. export: graph files, ``tokenizer.json`` and ``bundle.json`` into a temporary directory beside
   ``out`` (same file system, so the final rename is atomic);
5. validation: the bundle run in its own runtime on held-out examples of every task, against
   PyTorch at the same precision on one thread (``validate.py``); a mismatch fails the export;
6. storage: ``manifest.json``, then the temporary directory is renamed to ``out``.

A request that makes no sense (Core ML for Android, an unknown precision, an ``out`` that holds
something) is refused before any of that. Whatever fails later -- a toolchain, validation, a
full or read-only disk, Ctrl-C -- ends in an ExportError with its code, a failure metric and log
line, and no directory at ``out``: the temporary one is removed.

Example::

    manifest = export_model("default", platform="android", quantization="int2", out=Path("bundle"))
    manifest["validation"]["tasks"]["vqa"]      # accuracy in ONNX Runtime, == PyTorch's int2
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.export.bundle import (
    BUNDLE_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    describe_bundle,
    manifest,
    tokenizer_json,
    weight_summary,
    write_json,
)
from mobile_multimodal.export.decode import BundleModel, described_ocr_reader, load_bundle
from mobile_multimodal.export.deferred_signals import deferred_interrupts
from mobile_multimodal.export.formats import check_quantization, resolve_format, writer_for
from mobile_multimodal.export.genai import validate_genai
from mobile_multimodal.export.graphs import GraphSpec, build_graphs
from mobile_multimodal.export.validate import (
    ACCURACY_TOLERANCE,
    DEFAULT_EXAMPLES,
    MAX_ABS_DIFF_LIMIT,
    ValidationResult,
    not_executed,
    validate_bundle,
)
from mobile_multimodal.model.ctc_lm import MANIFEST_KEY as LM_MANIFEST_KEY
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.observability.export_telemetry import mobile_export
from mobile_multimodal.observability.tracing import stage

GENAI_EXAMPLES = 8  # captioning and VQA answers compared between onnxruntime-genai and decoder_step
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not overwrite):
        raise ExportError(
            ExportErrorCode.EXPORT_OUTPUT_EXISTS,
            f"{out} already exists and is not empty; remove it, choose another --out, or pass --overwrite",
        )


def _storage_error(exc: OSError, out: Path) -> ExportError:
    if exc.errno in _FULL:
        return ExportError(
            ExportErrorCode.EXPORT_DISK_FULL, f"no space left writing the bundle for {out}: {exc}"
        )
    if exc.errno in _UNWRITABLE:
        return ExportError(
            ExportErrorCode.EXPORT_OUTPUT_UNWRITABLE,
            f"cannot write the bundle next to {out} (read-only or permission denied): {exc}",
        )
    return ExportError(
        ExportErrorCode.EXPORT_OUTPUT_UNWRITABLE, f"writing the bundle for {out} failed: {exc}"
    )


def _load(model: str | Path, quantization: str) -> MobileMultiModalLLM:
    try:
        # the OCR language model the directory ships (from_pretrained attaches it) goes into the bundle
        return MobileMultiModalLLM.from_pretrained(model, quantization=quantization)
    except ModelLoadError as exc:
        raise ExportError(ExportErrorCode.EXPORT_MODEL_INVALID, f"{exc} ({exc.code})") from exc


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished bundle into place (replacing an old one only with ``overwrite``)."""
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise ExportError(ExportErrorCode.EXPORT_OUTPUT_EXISTS, f"{out} appeared during the export")
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "bundle")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_model(
    model: str | Path = "default",
    *,
    platform: str,
    fmt: str | None = None,
    quantization: str = "fp32",
    out: Path,
    progress: bool = False,
    validation_examples: int | None = DEFAULT_EXAMPLES,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``model`` for ``platform`` in ``fmt`` (the platform's default when None) at
    ``quantization`` into the bundle directory ``out``; returns its manifest (DESIGN.md "Export
    manifest"). ``validation_examples`` per task (None: the full held-out splits). Raises
    ExportError(code, message)."""
    out = Path(out).absolute()
    fmt = resolve_format(platform, fmt)
    check_quantization(quantization)
    _check_out(out, overwrite)
    start = time.perf_counter()
    steps = tqdm(
        total=6, desc=f"export {fmt} {quantization}", unit="stage", disable=not progress, leave=False
    )
    tmp: Path | None = None
    with mobile_export(platform, quantization, fmt) as record:
        try:
            with stage("model_validation", {"export.model": str(model)}):
                loaded = _load(model, quantization)
            steps.update()
            with stage("platform_selection", {"export.format": fmt}):
                writer = writer_for(fmt)
            steps.update()
            with stage("quantization", {"export.quantization": quantization}):
                graphs = build_graphs(loaded, prefill=writer.prefill)
            steps.update()
            with stage("export", {"export.runtime": writer.runtime}):
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
                with deferred_interrupts():  # never unwind through graph capture (SIGSEGV)
                    written = writer.write(loaded, graphs, quantization, tmp)
                _describe(loaded, graphs, written, tmp, platform, fmt, writer, quantization)
                written += [tmp / TOKENIZER_FILE, tmp / BUNDLE_FILE, *_ship_ocr_lm(loaded, tmp)]
            steps.update()
            with stage("validation", {"export.runtime": writer.runtime}) as span, _one_torch_thread():
                result = _validate(loaded, graphs, tmp, writer, quantization, validation_examples)
                span.set_attribute("export.validation.executed", bool(result.validation["executed"]))
                if result.failures:
                    raise ExportError(
                        ExportErrorCode.EXPORT_VALIDATION_FAILED,
                        f"the {fmt} bundle does not match PyTorch: " + "; ".join(result.failures),
                    )
            steps.update()
            with stage("storage", {"export.out": str(out)}):
                description = manifest(
                    tmp,
                    written,
                    platform=platform,
                    fmt=fmt,
                    quantization=quantization,
                    duration_s=time.perf_counter() - start,
                    validation=result.validation,
                )
                write_json(tmp / MANIFEST_FILE, description)
                _place(tmp, out, overwrite)
                tmp = None
                record.use_manifest(description)  # size, validation scores, runtime latency
            steps.update()
            record.span.set_attribute("export.bundle", str(out))
            return description
        except KeyboardInterrupt as exc:
            error = ExportError(
                ExportErrorCode.EXPORT_INTERRUPTED, "the export was interrupted; no bundle was written"
            )
            record.span.set_attribute("export.error_code", str(error.code))
            raise error from exc
        except OSError as exc:
            error = _storage_error(exc, out)
            record.span.set_attribute("export.error_code", str(error.code))
            raise error from exc
        except ExportError as exc:
            record.span.set_attribute("export.error_code", str(exc.code))
            raise
        finally:
            steps.close()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _describe(
    model: MobileMultiModalLLM,
    graphs: list[GraphSpec],
    written: list[Path],
    tmp: Path,
    platform: str,
    fmt: str,
    writer: Any,
    quantization: str,
) -> dict[str, Any]:
    by_stem = {p.name.split(".")[0]: p.relative_to(tmp).as_posix() for p in written}
    missing = [g.name for g in graphs if g.name not in by_stem]
    if missing:
        raise ExportError(
            ExportErrorCode.EXPORT_CONVERSION_FAILED, f"the {fmt} writer wrote no file for {missing}"
        )
    write_json(tmp / TOKENIZER_FILE, tokenizer_json(model.tokenizer))
    bundle = describe_bundle(
        model,
        graphs,
        {g.name: by_stem[g.name] for g in graphs},
        platform=platform,
        fmt=fmt,
        runtime=writer.runtime,
        quantization=quantization,
        ocr_lm=None if model.ocr_reader is None else model.manifest[LM_MANIFEST_KEY],
    )
    # how the weights are stored, as the written files show it (ONNX: bytes by dtype)
    bundle["weights"] = {**weight_summary(graphs), "storage": writer.inspect(tmp, bundle)}
    extras = getattr(writer, "bundle_extras", None)  # optional: what else the format's files offer
    if extras is not None:
        bundle.update(extras(tmp, bundle))
    write_json(tmp / BUNDLE_FILE, bundle)
    return bundle


def _ship_ocr_lm(model: MobileMultiModalLLM, tmp: Path) -> list[Path]:
    """Copy the model's OCR language model, when it ships one, into the bundle (as bundle.json
    names it)."""
    if model.ocr_reader is None or model.model_dir is None:
        return []
    name = str(model.manifest[LM_MANIFEST_KEY]["language_model"])
    shutil.copyfile(model.model_dir / name, tmp / name)
    return [tmp / name]


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """PyTorch on one intra-op thread, as the export benchmark runs both sides of a comparison.
    On a shared 2-core machine a second thread mostly waits for the other one: measured, the
    INT2 reference on 32 examples per task took 20.6 s of CPU with two threads, 3.9 s with one
    (same scores). The service's export worker runs on one thread anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _validate(
    model: MobileMultiModalLLM,
    graphs: list[GraphSpec],
    tmp: Path,
    writer: Any,
    quantization: str,
    examples: int | None,
) -> ValidationResult:
    bundle = load_bundle(tmp)
    # the reference reads OCR as the bundle describes (its language model, or greedily)
    model.ocr_reader = described_ocr_reader(bundle)
    runner = writer.open(tmp, bundle.description)
    if isinstance(runner, str):
        return not_executed(writer.runtime, runner, writer.inspect(tmp, bundle.description))
    # a writer whose runtime computes differently by design (ExecuTorch quantizes activations)
    # may declare its own bounds: tolerance(quantization) -> (accuracy_relative, max_abs_diff)
    tolerance = getattr(writer, "tolerance", None)
    accuracy, max_diff = tolerance(quantization) if tolerance else (ACCURACY_TOLERANCE, MAX_ABS_DIFF_LIMIT)
    result = validate_bundle(
        model,
        graphs,
        bundle,
        runner,
        runtime=writer.runtime,
        examples=examples,
        tolerance=accuracy,
        max_abs_diff_limit=max_diff,
    )
    if "onnxruntime_genai" in bundle.description:
        genai = validate_genai(BundleModel(bundle, runner), min(examples or GENAI_EXAMPLES, GENAI_EXAMPLES))
        result.validation["onnxruntime_genai"] = genai
        if genai["executed"] and genai["identical_tokens"] != genai["answers"]:
            result.failures.append(
                f"onnxruntime-genai decoded {genai['answers'] - genai['identical_tokens']} of "
                f"{genai['answers']} answers differently from the bundle's decoder_step"
            )
    return result
