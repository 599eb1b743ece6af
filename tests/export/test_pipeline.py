"""export_model(): the bundle's files and descriptions, the export trace, and every way an export
can fail leaving no bundle behind (with its error code, failure metric and log line)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import numpy_helper

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.export import onnx as onnx_format
from mobile_multimodal.export import pipeline
from mobile_multimodal.export.decode import BundleModel, load_bundle
from mobile_multimodal.export.pipeline import export_model
from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.model.llm import MobileMultiModalLLM, bundled_model_dir
from mobile_multimodal.observability.export_telemetry import EXPORT_STAGES

from .conftest import BuiltBundle, sample

GRAPH_FILES = {
    f"{g}.onnx" for g in ("vision", "ocr", "cross_kv", "decoder_step", "image_embed", "text_embed", "prefill")
}
GENAI_FILES = {"genai/decoder.onnx", "genai/genai_config.json"}
DTYPES = {1: "float32", 7: "int64"}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# ---- the bundle ----------------------------------------------------------------------------------
def test_manifest_is_designs_export_manifest(onnx_int2: BuiltBundle) -> None:
    m = onnx_int2.manifest
    assert set(m) == {"format", "platform", "quantization", "duration_s", "files", "validation"}
    assert (m["format"], m["platform"], m["quantization"]) == ("onnx", "ios", "int2")
    assert json.loads((onnx_int2.out / "manifest.json").read_text()) == m
    paths = {f["path"] for f in m["files"]}
    assert paths == GRAPH_FILES | GENAI_FILES | {"bundle.json", "tokenizer.json", "ocr_lm.json.gz"}
    for f in m["files"]:
        assert sha256_file(onnx_int2.out / f["path"]) == f["sha256"]
        assert (onnx_int2.out / f["path"]).stat().st_size == f["bytes"]
    on_disk = {p.relative_to(onnx_int2.out).as_posix() for p in onnx_int2.out.rglob("*") if p.is_file()}
    assert on_disk == paths | {"manifest.json"}
    assert {"executed", "runtime", "max_abs_diff", "tasks", "reference"} <= set(m["validation"])
    assert 0 < m["duration_s"] < 600
    assert _leftovers(onnx_int2.out) == []


def test_bundle_json_describes_the_graph_files(onnx_int2: BuiltBundle) -> None:
    bundle = json.loads((onnx_int2.out / "bundle.json").read_text())
    assert set(bundle["graphs"]) == {f.removesuffix(".onnx") for f in GRAPH_FILES}
    for name, graph in bundle["graphs"].items():
        proto = onnx.load(str(onnx_int2.out / graph["file"]))
        for described, actual in (
            (graph["inputs"], proto.graph.input),
            (graph["outputs"], proto.graph.output),
        ):
            batch_axes = graph.get("batch_axes", {})
            question_axes = graph.get("question_axes", {})
            prompt_axes = graph.get("prompt_axes", {})
            got = [
                {
                    "name": v.name,
                    "dtype": DTYPES[v.type.tensor_type.elem_type],
                    # an axis that takes any batch is described at batch 1 and named in batch_axes;
                    # one that takes any question length, at the longest, in question_axes; a
                    # prompt's (prefill), at the longest the cache leaves a token for
                    "shape": [
                        1
                        if d.dim_param and batch_axes.get(v.name) == i
                        else bundle["question"]["max_len"]
                        if d.dim_param and question_axes.get(v.name) == i
                        else bundle["kv_cache"]["max_len"] - 1
                        if d.dim_param and prompt_axes.get(v.name) == i
                        else d.dim_value
                        for i, d in enumerate(v.type.tensor_type.shape.dim)
                    ],
                }
                for v in actual
            ]
            assert got == described, name
    # a server's batch: one vision, one cross_kv and one decoder_step call per step for all rows
    layers = [f"{p}_{i}" for p in ("self_k", "self_v", "cross_k", "cross_v") for i in range(4)]
    assert bundle["graphs"]["decoder_step"]["batch_axes"] == {
        "token": 0,
        "position": 0,
        **{name: 0 for name in layers},
        "logits": 0,
        "new_k": 1,
        "new_v": 1,
    }
    vision_inputs = {i["name"] for i in bundle["graphs"]["vision"]["inputs"]}
    assert bundle["graphs"]["vision"]["batch_axes"] == {n: 0 for n in (*vision_inputs, "image_tokens")}
    assert bundle["graphs"]["cross_kv"]["batch_axes"] == {"image_tokens": 0, "cross_k": 1, "cross_v": 1}
    # a batch of text lines or retrieval inputs: one call each
    assert bundle["graphs"]["ocr"]["batch_axes"] == {"line_image": 0, "log_probs": 0}
    assert bundle["graphs"]["image_embed"]["batch_axes"] == {"image_tokens": 0, "embedding": 0}
    assert bundle["graphs"]["text_embed"]["batch_axes"] == {"ids": 0, "mask": 0, "embedding": 0}
    # a batch's prompts in one prefill call, any length
    assert bundle["graphs"]["prefill"]["batch_axes"] == {
        "tokens": 0,
        "cross_k": 1,
        "cross_v": 1,
        "prompt_k": 1,
        "prompt_v": 1,
    }
    assert bundle["graphs"]["prefill"]["prompt_axes"] == {"tokens": 1, "prompt_k": 3, "prompt_v": 3}
    assert all("batch_axes" in g for g in bundle["graphs"].values())
    assert bundle["text"]["max_len"] == 48 and bundle["question"]["max_len"] == 36  # the API's limits
    cache = bundle["kv_cache"]
    assert cache["max_len"] == 48 and cache["shape"] == [4, 1, 5, 48, 32]
    step_inputs = {i["name"]: i["shape"] for i in bundle["graphs"]["decoder_step"]["inputs"]}
    assert bundle["bundle_version"] == 2
    assert cache["layer_shape"] == [1, 5, 48, 32] and cache["layers"] == 4
    assert [step_inputs[n] for n in cache["inputs"]["self_k"]] == [cache["layer_shape"]] * 4
    assert [step_inputs[n] for n in cache["inputs"]["cross_v"]] == [cache["cross_shape"][1:]] * 4
    step_outputs = {o["name"]: o["shape"] for o in bundle["graphs"]["decoder_step"]["outputs"]}
    assert step_outputs["new_k"] == step_outputs["new_v"] == [4, 1, 5, 1, 32]  # only the new slot
    tokenizer = json.loads((onnx_int2.out / bundle["tokenizer"]).read_text())
    model_tok = MobileMultiModalLLM.from_pretrained("default").tokenizer
    assert tokenizer["vocab"] == model_tok.itos and tokenizer["ctc"]["charset"] == model_tok.charset
    assert bundle["special_tokens"]["<eos>"] == model_tok.eos_id
    assert bundle["tasks"]["captioning"]["prompt"] == model_tok.prompt("captioning")
    scene_size = MobileMultiModalLLM.from_pretrained("default").config.scene_size
    assert bundle["image_preprocessing"]["scene"]["height"] == scene_size
    assert any("argmax" in step for step in bundle["decode_loop"])
    assert bundle["weights"]["packed_layers"]["linear int2"]["group_sizes"] == [80]
    assert bundle["weights"]["storage"]["initializer_bytes_by_dtype"]["uint8"] > 0


def test_an_app_can_drive_the_bundle_from_its_files_alone(onnx_int2: BuiltBundle) -> None:
    bundle = load_bundle(onnx_int2.out)
    app = BundleModel(bundle, onnx_format.WRITER.open(onnx_int2.out, bundle.description))  # type: ignore[arg-type]
    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    scenes = load_eval_split("vqa", 4)
    assert app.generate_captions([e.image for e in scenes]) == model.generate_captions(
        [e.image for e in scenes]
    )
    questions = [e.question for e in scenes]
    answers = app.answer_questions([e.image for e in scenes], questions)
    assert answers == model.answer_questions([e.image for e in scenes], questions)
    assert sum(a == e.answer for a, e in zip(answers, scenes, strict=True)) >= 3
    # OCR with the language model the bundle carries and describes, as the model ships it
    ocr = bundle.description["tasks"]["ocr"]
    assert ocr["decode"] == "ctc_prefix_beam_lm" and ocr["language_model"]["file"] == "ocr_lm.json.gz"
    assert ocr["language_model"]["search"] and ocr["language_model"]["alpha"] == 0.3
    assert (onnx_int2.out / "ocr_lm.json.gz").read_bytes() == (
        bundled_model_dir() / "ocr_lm.json.gz"
    ).read_bytes()
    lines = [e.image for e in load_eval_split("ocr", 12)]
    assert app.ocr_reader is not None and app.extract_texts(lines) == model.extract_texts(lines)


def test_the_export_trace_has_the_six_stages(onnx_fp32: BuiltBundle) -> None:
    spans = {s.name: s for s in onnx_fp32.spans}
    root = spans["mobile_export"]
    assert root.attributes is not None and root.attributes["export.format"] == "onnx"
    assert root.attributes["export.size_bytes"] == sum(f["bytes"] for f in onnx_fp32.manifest["files"])
    children = sorted((s for s in onnx_fp32.spans if s.parent and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time or 0)  # fmt: skip
    assert tuple(s.name for s in children) == EXPORT_STAGES
    assert all(s.status.is_ok for s in children)


# ---- failures ------------------------------------------------------------------------------------
def _failed_export(
    out: Path, code: ExportErrorCode, caplog: pytest.LogCaptureFixture, **kwargs: Any
) -> ExportError:
    before = sample("mobile_export_failures_total", {"platform": "android", "quantization": "int2"})
    with (
        caplog.at_level(logging.ERROR, logger="mobile_multimodal.export"),
        pytest.raises(ExportError) as info,
    ):
        export_model("default", platform="android", quantization="int2", out=out, **kwargs)
    assert info.value.code == code, info.value
    assert not out.exists() and _leftovers(out) == []
    after = sample("mobile_export_failures_total", {"platform": "android", "quantization": "int2"})
    assert after == before + 1
    (line,) = [r for r in caplog.records if getattr(r, "operation", None) == "mobile_export"]
    assert line.levelno == logging.ERROR and getattr(line, "error_code", None) == code
    return info.value


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    immutable = False
    probe = directory / "probe"
    try:
        probe.mkdir()  # root ignores the mode bits: make it immutable instead (root cannot write then)
        probe.rmdir()
        immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("cannot make a read-only directory here (root, and no chattr)")
    except PermissionError:
        pass
    try:
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def test_a_read_only_output_directory_fails_cleanly(
    read_only_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    error = _failed_export(read_only_dir / "bundle", ExportErrorCode.EXPORT_OUTPUT_UNWRITABLE, caplog)
    assert "read-only or permission denied" in error.message
    assert list(read_only_dir.iterdir()) == []


def test_a_validation_mismatch_fails_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_write = onnx_format.WRITER.write

    def write_then_corrupt(*args: Any, **kwargs: Any) -> list[Path]:
        files = real_write(*args, **kwargs)
        # a wrong weight, as a broken converter would write it: the final norm's scale flipped
        step = next(f for f in files if f.name == "decoder_step.onnx")
        proto = onnx.load(str(step))
        for init in proto.graph.initializer:
            if init.name == "decoder.norm.weight":
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(proto, str(step))
        return files

    monkeypatch.setattr(onnx_format.WRITER, "write", write_then_corrupt)
    error = _failed_export(
        tmp_path / "bundle", ExportErrorCode.EXPORT_VALIDATION_FAILED, caplog, validation_examples=4
    )
    assert "decoder_step" in error.message and "does not match PyTorch" in error.message


def test_an_interrupted_export_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_write = onnx_format.WRITER.write

    def write_then_interrupt(*args: Any, **kwargs: Any) -> list[Path]:
        real_write(*args, **kwargs)  # the graph files are on disk when Ctrl-C arrives
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_format.WRITER, "write", write_then_interrupt)
    _failed_export(tmp_path / "bundle", ExportErrorCode.EXPORT_INTERRUPTED, caplog)


def test_a_missing_toolchain_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(onnx_format, "package_version", lambda name: None if name == "onnxruntime" else "1.0")
    error = _failed_export(tmp_path / "bundle", ExportErrorCode.EXPORT_DEPENDENCY_MISSING, caplog)
    assert "onnxruntime" in error.message and "pip install" in error.message


def test_requests_that_make_no_sense_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded for a refused request")

    monkeypatch.setattr(pipeline, "_load", no_work)
    labels = {"platform": "android", "quantization": "fp32"}
    before = sample("mobile_export_failures_total", labels)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    cases = [
        ({"platform": "android", "fmt": "coreml"}, ExportErrorCode.UNSUPPORTED_PLATFORM_FORMAT),
        ({"platform": "windows"}, ExportErrorCode.UNKNOWN_PLATFORM),
        ({"platform": "android", "fmt": "tensorrt"}, ExportErrorCode.UNKNOWN_FORMAT),
        ({"platform": "android", "quantization": "int3"}, ExportErrorCode.UNKNOWN_QUANTIZATION),
    ]
    for kwargs, code in cases:
        with pytest.raises(ExportError) as info:
            export_model("default", out=tmp_path / "bundle", **kwargs)  # type: ignore[arg-type]
        assert info.value.code == code
    with pytest.raises(ExportError) as info:
        export_model("default", platform="android", out=occupied)
    assert info.value.code == ExportErrorCode.EXPORT_OUTPUT_EXISTS
    assert (occupied / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    assert sample("mobile_export_failures_total", labels) == before  # refused, not failed


def test_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    """A real full file system: a 256 KiB tmpfs in a private mount namespace (skipped where the
    kernel does not allow unprivileged namespaces)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mount = tmp_path / "small"
    mount.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=256k none {mount}"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    script = (
        f"mount -t tmpfs -o size=256k none {mount} && "
        f"{sys.executable} -m mobile_multimodal.cli export --platform android --quantization int2 "
        f"--out {mount}/bundle --examples 1; echo rc=$?; ls -A {mount}"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert "error: EXPORT_DISK_FULL" in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == ["rc=1"]  # and nothing left on the file system


def test_any_model_directory_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--model DIR: another architecture (width 48, two layers) gets its own shapes in bundle.json."""
    manifest = export_model(
        tiny_model_dir, platform="android", quantization="fp32", out=tmp_path / "tiny", validation_examples=2
    )
    v = manifest["validation"]
    assert v["executed"] and v["tasks"] == v["reference"] and v["max_abs_diff"] < 1e-3
    bundle = json.loads((tmp_path / "tiny" / "bundle.json").read_text())
    assert bundle["kv_cache"]["shape"] == [2, 1, 2, 48, 24]
    # a model that ships no OCR language model: its bundle describes greedy CTC and holds none
    assert bundle["tasks"]["ocr"]["decode"] == "ctc_greedy" and "language_model" not in bundle["tasks"]["ocr"]
    assert not (tmp_path / "tiny" / "ocr_lm.json.gz").exists()
    assert bundle["graphs"]["vision"]["outputs"][0]["shape"] == [1, 64, 48]


def test_a_missing_quantized_variant_is_a_clear_failure(tiny_model_dir: Path, tmp_path: Path) -> None:
    labels = {"platform": "ios", "quantization": "int2"}
    before = sample("mobile_export_failures_total", labels)
    with pytest.raises(ExportError) as info:
        export_model(tiny_model_dir, platform="ios", fmt="onnx", quantization="int2", out=tmp_path / "b")
    assert info.value.code == ExportErrorCode.EXPORT_MODEL_INVALID
    assert "mobile-mm quantize --bits 2" in info.value.message
    assert sample("mobile_export_failures_total", labels) == before + 1
    assert list(tmp_path.iterdir()) == []
