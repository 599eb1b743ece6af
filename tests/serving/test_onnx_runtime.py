"""``serve --runtime onnxruntime``: the export bundle's graphs on ONNX Runtime, served like PyTorch.

Two real bundles of the bundled model are exported once for the module (few validation examples,
to keep it short): int2 through the server's own first-start path (``ensure_bundle`` into the
data directory) and fp32 with ``--bundle``-style settings. The answers are compared with the
PyTorch model's and with the export validation's own decode (``decode.BundleModel``); a tampered
bundle is refused; one real server on ONNX Runtime int2 answers every task, reports its runtime in
``model_info`` and the ``model_load`` span, and its canary and shadow compare it with the fp32
PyTorch reference. Waits are for events and bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from tests.reliability.serve_process import ServeProcess

from mobile_multimodal import export as export_package
from mobile_multimodal.data.natural_images import empty_images, natural_photographs
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.data.user_style import load_user_split
from mobile_multimodal.export.decode import BundleModel, BundleVersionError, load_bundle
from mobile_multimodal.export.graphs import TorchGraphRunner, build_graphs
from mobile_multimodal.export.onnx import pack_low_first
from mobile_multimodal.export.pipeline import export_model
from mobile_multimodal.export.running_decode import DecodedAnswer, DecodeRequest, RunningDecode
from mobile_multimodal.export.step_caches import ArrayBatchSteps, ArraySteps
from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.manifest_signing import sign_manifest
from mobile_multimodal.model import MobileMultiModalLLM, bundled_model_dir
from mobile_multimodal.model.domain import BLANK_MAX_SHARE, BLANK_SIDE, BLANK_TOLERANCE
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.model.task_decoding import TaskRequest, TaskResult
from mobile_multimodal.observability.model_metrics import kv_cache_peak_bytes
from mobile_multimodal.serving.batch_jobs import Job
from mobile_multimodal.serving.bundle_decoding import BundleTaskDecoding
from mobile_multimodal.serving.continuous_batcher import ContinuousBatcher
from mobile_multimodal.serving.engine import InferenceEngine
from mobile_multimodal.serving.model_loading import onnx_threads_for, torch_threads_for
from mobile_multimodal.serving.onnx_runtime_model import OnnxRuntimeModel
from mobile_multimodal.serving.onnx_sessions import (
    BoundDecoderSteps,
    BundleSessions,
    dequantize_matmuls,
    unpack_low_first,
    whole_zero_points,
    widen_2bit_matmuls,
)
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.serving.runtime_loader import (
    default_bundle_dir,
    ensure_bundle,
    load_model,
    load_onnx_runtime_model,
)
from mobile_multimodal.settings import Settings
from mobile_multimodal.training.canary_set import evaluate_canary

from .conftest import LiveServer, data_uri, make_settings, metric_value, wait_canary_runs

pytestmark = pytest.mark.skipif(
    not (bundled_model_dir() / "int2" / "manifest.json").exists(), reason="no bundled int2 model"
)
EXAMPLES = 4  # validation examples per task in the module's exports
SIGNING_KEY = "test-signing-key"


def _settings(data_dir: Path, quantization: str, **overrides: Any) -> Settings:
    return make_settings(
        data_dir, runtime="onnxruntime", quantization=quantization, **{"torch_threads": 1, **overrides}
    )


@pytest.fixture(scope="module")
def int2_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the int2 bundle the server exports on its first start."""
    data_dir = tmp_path_factory.mktemp("onnx-int2-data")
    ensure_bundle(_settings(data_dir, "int2"), export_examples=EXAMPLES)
    return data_dir


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx-fp32") / "bundle"
    export_model(
        "default", platform="android", fmt="onnx", quantization="fp32", out=out, validation_examples=EXAMPLES
    )
    return out


def _onnx_model(quantization: str, int2_data_dir: Path, fp32_bundle: Path) -> OnnxRuntimeModel:
    if quantization == "int2":
        return load_onnx_runtime_model(_settings(int2_data_dir, "int2"))
    return load_onnx_runtime_model(_settings(fp32_bundle.parent, "fp32", bundle=fp32_bundle))


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_every_task_answers_as_pytorch_and_as_the_bundle_validation_decodes(
    quantization: str, int2_data_dir: Path, fp32_bundle: Path
) -> None:
    onnx = _onnx_model(quantization, int2_data_dir, fp32_bundle)
    torch_model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    # the export validation's decode loop, on the PyTorch graphs: what the bundle is checked against
    validation = BundleModel(
        load_bundle(onnx.model_dir), TorchGraphRunner(build_graphs(torch_model, prefill=True))
    )
    n = onnx.manifest["validation"]["examples_per_task"]["captioning"]
    assert n == EXAMPLES
    captions = load_eval_split("captioning", n)
    images = [e.image for e in captions]
    ours: list[float] = []
    theirs: list[float] = []
    served = onnx.generate_captions(images, confidences=ours)
    assert served == torch_model.generate_captions(images, confidences=theirs)
    assert served == validation.generate_captions(images)
    assert all(s for s in served)  # real captions, not empty strings
    np.testing.assert_allclose(ours, theirs, atol=1e-4)

    vqa = load_eval_split("vqa", n)
    images, questions = [e.image for e in vqa], [e.question for e in vqa]
    assert onnx.answer_questions(images, questions) == torch_model.answer_questions(images, questions)
    assert onnx.answer_questions(images, questions) == validation.answer_questions(images, questions)

    ocr = load_eval_split("ocr", n)
    images = [e.image for e in ocr]
    ours, theirs = [], []
    texts = onnx.extract_texts(images, confidences=ours)
    assert texts == torch_model.extract_texts(images, confidences=theirs)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)

    retrieval = load_eval_split("retrieval", n)
    images, texts = [e.image for e in retrieval], [e.text for e in retrieval]
    np.testing.assert_allclose(
        onnx.get_image_embeddings(images), torch_model.get_image_embeddings(images), atol=1e-4
    )
    np.testing.assert_allclose(
        onnx.get_text_embeddings(texts), torch_model.get_text_embeddings(texts), atol=1e-4
    )

    info = onnx.get_model_info()
    assert (info["runtime"], info["quantization"]) == ("onnxruntime", quantization)
    assert onnx.max_question_tokens == torch_model.max_question_tokens
    assert onnx.tokenizer.prompt("vqa", "what color ?") == torch_model.tokenizer.prompt("vqa", "what color ?")


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_the_bundle_carries_the_domain_check_and_flags_as_pytorch_does(
    quantization: str, int2_data_dir: Path, fp32_bundle: Path
) -> None:
    """Served on ONNX Runtime, a photograph or an empty canvas is flagged out of domain as on
    PyTorch: the bundle carries the model's calibrated thresholds (bundle.json's domain_check,
    where an app finds them too), and both signals come from the bundle's own graphs."""
    onnx = _onnx_model(quantization, int2_data_dir, fp32_bundle)
    torch_model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    entry, section = torch_model.manifest["domain_check"], onnx.spec["domain_check"]
    assert (section["threshold"], section["agreement_threshold"]) == (
        entry["threshold"],
        entry["agreement_threshold"],
    )
    assert section["caption_tokens"] == 32 and section["how"]
    blank = {"side": BLANK_SIDE, "tolerance": BLANK_TOLERANCE, "max_share": BLANK_MAX_SHARE}
    assert section["blank"] == blank
    red = Image.new("RGB", (300, 300), (220, 30, 30))  # confidently a red rectangle: flagged as blank
    scenes = [e.image for e in load_eval_split("captioning", 3)]
    images = [*natural_photographs(crops_per_photo=0)[:2], empty_images()[0], red, *scenes]
    flags, scores, agreements = onnx.out_of_domain(images)
    theirs = torch_model.out_of_domain(images)
    assert flags == theirs[0] and flags == [True] * 4 + [False] * 3
    np.testing.assert_allclose(scores, theirs[1], atol=1e-4)
    np.testing.assert_allclose(agreements, theirs[2], atol=1e-4)
    own: list[float] = []  # a served caption's own decode carries the score: no second decode
    captions = onnx.generate_captions(images, max_tokens=32, domain=own)
    np.testing.assert_allclose(own, scores, atol=1e-6)
    assert onnx.out_of_domain(images, own, captions)[0] == flags


def test_a_stopped_row_ends_and_its_neighbours_decode_on(int2_data_dir: Path, fp32_bundle: Path) -> None:
    onnx = _onnx_model("int2", int2_data_dir, fp32_bundle)
    images = [e.image for e in load_eval_split("captioning", 2)]
    gave_up, waiting = threading.Event(), threading.Event()
    gave_up.set()
    captions = onnx.generate_captions(images, stop=[gave_up, waiting])
    assert captions == ["", onnx.generate_captions(images[1:])[0]]


def _tamper_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _load_code(settings: Settings) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_onnx_runtime_model(settings)
    return caught.value.code


def test_a_tampered_bundle_is_refused(fp32_bundle: Path, tmp_path: Path) -> None:
    # one flipped byte in a graph, or in the OCR reader's language model (vouched for alike)
    for name in ("decoder_step.onnx", "ocr_lm.json.gz"):
        flipped = _tamper_copy(fp32_bundle, tmp_path / f"flipped-{name}")
        data = bytearray((flipped / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (flipped / name).write_bytes(bytes(data))
        assert _load_code(_settings(tmp_path, "fp32", bundle=flipped)) == "MODEL_INTEGRITY_FAILED", name

    # a file the runtime reads that the manifest does not list (nobody vouches for it)
    for name in ("tokenizer.json", "ocr_lm.json.gz"):
        unlisted = _tamper_copy(fp32_bundle, tmp_path / f"unlisted-{name}")
        manifest = json.loads((unlisted / "manifest.json").read_text())
        manifest["files"] = [f for f in manifest["files"] if f["path"] != name]
        (unlisted / "manifest.json").write_text(json.dumps(manifest))
        assert _load_code(_settings(tmp_path, "fp32", bundle=unlisted)) == "MODEL_INTEGRITY_FAILED", name

    # a signing key is set: an unsigned manifest is refused, a signed one loads
    signed = _settings(tmp_path, "fp32", bundle=fp32_bundle, manifest_signing_key=SIGNING_KEY)
    assert _load_code(signed) == "MODEL_INTEGRITY_FAILED"
    resigned = _tamper_copy(fp32_bundle, tmp_path / "signed")
    manifest = json.loads((resigned / "manifest.json").read_text())
    (resigned / "manifest.json").write_text(json.dumps(sign_manifest(manifest, SIGNING_KEY)))
    model = load_onnx_runtime_model(
        _settings(tmp_path, "fp32", bundle=resigned, manifest_signing_key=SIGNING_KEY)
    )
    assert model.quantization == "fp32"

    # a bundle of an older release (version 1: decoder_step returned the whole cache), its
    # manifest intact, is refused with what to do, before any session is built
    older = _tamper_copy(fp32_bundle, tmp_path / "older")
    description = json.loads((older / "bundle.json").read_text())
    (older / "bundle.json").write_text(json.dumps({**description, "bundle_version": 1}))
    manifest = json.loads((older / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "bundle.json":
            entry["sha256"] = sha256_file(older / "bundle.json")
            entry["bytes"] = (older / "bundle.json").stat().st_size
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"version-1 bundle.*export it again") as caught:
        load_onnx_runtime_model(_settings(tmp_path, "fp32", bundle=older))
    assert caught.value.code == "MODEL_MANIFEST_INVALID"
    with pytest.raises(BundleVersionError):
        load_bundle(older)

    # the bundle's precision must be the one asked for
    assert _load_code(_settings(tmp_path, "int2", bundle=fp32_bundle)) == "QUANTIZATION_UNAVAILABLE"
    assert _load_code(_settings(tmp_path, "fp32", bundle=tmp_path / "missing")) == "MODEL_NOT_FOUND"


def test_a_server_given_a_tampered_bundle_is_not_ready_and_counts_the_failure(
    fp32_bundle: Path, tmp_path: Path
) -> None:
    flipped = _tamper_copy(fp32_bundle, tmp_path / "flipped")
    (flipped / "tokenizer.json").write_text(
        (flipped / "tokenizer.json").read_text().replace("circle", "circus")
    )
    server = LiveServer(_settings(tmp_path, "fp32", bundle=flipped), load_model).start()
    try:
        deadline = time.monotonic() + 120
        with server.client() as client:
            while server.app.state.engine.state == "loading" and time.monotonic() < deadline:
                time.sleep(0.02)
            ready = client.get("/ready")
            text = client.get("/metrics").text
        assert ready.status_code == 503
        assert server.app.state.engine.error.code == "MODEL_INTEGRITY_FAILED"
        assert metric_value(text, "model_load_failures_total", reason="MODEL_INTEGRITY_FAILED") >= 1
    finally:
        server.stop()


# ---- one real server on ONNX Runtime int2 --------------------------------------------------------
@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def onnx_server(int2_data_dir: Path, spans: InMemorySpanExporter) -> Iterator[LiveServer]:
    settings = _settings(
        int2_data_dir,
        "int2",
        canary_interval_s=3600,
        canary_size=8,
        shadow_sample_rate=1.0,
        shadow_queue=64,
        integrity_check_interval_s=0.5,
    )
    server = LiveServer(settings, load_model, span_exporter=spans).start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _wait_metric(server: LiveServer, name: str, at_least: float, **labels: str) -> str:
    deadline = time.monotonic() + 120
    with server.client() as client:
        while time.monotonic() < deadline:
            text = client.get("/metrics").text
            if metric_value(text, name, **labels) >= at_least:
                return text
            time.sleep(0.1)
    raise AssertionError(f"{name}{labels} did not reach {at_least} within 120 s")


def test_served_over_http_every_task_with_the_runtime_in_model_info_and_the_load_span(
    onnx_server: LiveServer, int2_data_dir: Path, fp32_bundle: Path, spans: InMemorySpanExporter
) -> None:
    direct = _onnx_model("int2", int2_data_dir, fp32_bundle)
    probe = ProbeCase.default().image
    question = "what color is the circle ?"
    line = load_eval_split("ocr", 1)[0].image
    with onnx_server.client() as client:
        caption = client.post("/inference", json={"image": data_uri(probe), "task": "captioning"})
        answer = client.post(
            "/inference", json={"image": data_uri(probe), "task": "vqa", "question": question}
        )
        text = client.post("/inference", json={"image": data_uri(line), "task": "ocr"})
        scored = client.post(
            "/inference",
            json={
                "image": data_uri(probe),
                "task": "retrieval",
                "texts": ["a blue star", "a large red circle"],
            },
        )
        content = [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": data_uri(probe)}},
        ]
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "mobile-multimodal-llm", "messages": [{"role": "user", "content": content}]},
        )
        photo = client.post(
            "/inference",
            json={"image": data_uri(natural_photographs(crops_per_photo=0)[0]), "task": "captioning"},
        )
        metrics_text = client.get("/metrics").text
    for response in (caption, answer, text, scored, chat, photo):
        assert response.status_code == 200, response.text
    assert caption.json()["result"]["caption"] == direct.generate_captions([probe])[0]
    assert ProbeCase.default().is_correct(caption.json()["result"]["caption"])
    assert caption.json()["model"]["quantization"] == "int2"
    assert answer.json()["result"]["answer"] == direct.answer_questions([probe], [question])[0] == "red"
    assert text.json()["result"]["text"] == direct.extract_texts([line])[0]
    assert scored.json()["result"]["best"] == "a large red circle"
    assert 0 < caption.json()["result"]["confidence"] <= 1
    assert caption.json()["result"]["out_of_domain"] is False  # the bundle's own domain check
    assert photo.json()["result"]["out_of_domain"] is True and "domain_agreement" in photo.json()["result"]
    assert metric_value(metrics_text, "model_out_of_domain_inputs_total", task="captioning") >= 1
    assert chat.json()["choices"][0]["message"]["content"] == "red"
    assert metric_value(metrics_text, "model_info", runtime="onnxruntime", quantization="int2") == 1
    assert metric_value(metrics_text, "model_inference_requests_total", task="ocr", status="success") >= 1
    deadline = time.monotonic() + 60  # spans are exported in batches
    while not (loads := [s for s in spans.get_finished_spans() if s.name == "model_load"]):
        assert time.monotonic() < deadline, "no model_load span within 60 s"
        time.sleep(0.05)
    assert [s.attributes and s.attributes["model.runtime"] for s in loads] == ["onnxruntime"]


def test_concurrent_batches_are_an_onnx_runtime_setting(tmp_path: Path) -> None:
    assert make_settings(tmp_path).batch_concurrency == 1  # PyTorch: one batch at a time
    assert make_settings(tmp_path, runtime="onnxruntime").batch_concurrency == 2
    assert make_settings(tmp_path, runtime="onnxruntime", concurrent_batches=3).batch_concurrency == 3
    assert make_settings(tmp_path, concurrent_batches=1).batch_concurrency == 1
    with pytest.raises(ValueError, match="CONCURRENT_BATCHES=2 needs MOBILE_MM_RUNTIME=onnxruntime"):
        make_settings(tmp_path, concurrent_batches=2)


def test_canary_and_shadow_compare_the_onnx_int2_model_with_the_fp32_pytorch_reference(
    onnx_server: LiveServer, int2_data_dir: Path, fp32_bundle: Path
) -> None:
    onnx = _onnx_model("int2", int2_data_dir, fp32_bundle)
    fp32 = MobileMultiModalLLM.from_pretrained("default")
    text = wait_canary_runs(onnx_server, 1)
    served = evaluate_canary(onnx, 8)["tasks"]
    reference = evaluate_canary(fp32, 8)["tasks"]
    for task, values in served.items():
        score = metric_value(text, "model_accuracy_score", task=task, quantization="int2")
        one_example = max(values["primary"], 1.0) / 8 * 1.01  # see test_live_quality's canary test
        assert score == pytest.approx(values["primary"], abs=one_example)
        fp32_score = reference[task]["primary"]
        loss = metric_value(text, "quantization_accuracy_loss", task=task, quantization_type="int2")
        assert loss == pytest.approx(
            (fp32_score - values["primary"]) / fp32_score, abs=2 * one_example / fp32_score
        )
    # the reference is PyTorch, loaded beside the ONNX Runtime sessions: its weights and its KV cache
    reference = onnx_server.app.state.duties.canary.reference.model
    assert metric_value(text, "model_memory_usage_bytes", component="reference_model") == sum(
        fp32.component_memory_bytes().values()
    ) + kv_cache_peak_bytes(reference)

    # the probe scene, which the ONNX int2 bundle captions exactly as fp32 PyTorch does: the shadow
    # counts this request as an agreement (earlier tests' captions of other scenes may disagree)
    probe = ProbeCase.default().image
    assert onnx.generate_captions([probe]) == fp32.generate_captions([probe])
    before = metric_value(text, "quantization_shadow_comparisons_total", task="captioning", result="agree")
    disagreed = metric_value(
        text, "quantization_shadow_comparisons_total", task="captioning", result="disagree"
    )
    with onnx_server.client() as client:
        response = client.post("/inference", json={"image": data_uri(probe), "task": "captioning"})
    assert response.status_code == 200
    text = _wait_metric(
        onnx_server, "quantization_shadow_comparisons_total", before + 1, task="captioning", result="agree"
    )
    assert (
        metric_value(text, "quantization_shadow_comparisons_total", task="captioning", result="disagree")
        == disagreed
    )
    ratio = metric_value(
        text, "quantization_shadow_agreement_ratio", task="captioning", quantization_type="int2"
    )
    assert 0 < ratio <= 1 and (disagreed > 0 or ratio == 1)


def test_the_sessions_share_the_workers_cores_and_sleep_between_graphs(
    int2_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    # ONNX Runtime shares all of a worker's cores among its concurrent batches, torch leaves one
    # to the event loop
    assert [onnx_threads_for(workers) for workers in (1, 3, 8, 16)] == [8, 2, 1, 1]
    assert [onnx_threads_for(1, concurrency=n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    assert [torch_threads_for(workers) for workers in (1, 3, 8)] == [7, 1, 1]
    assert onnx_threads_for(1, requested=3, concurrency=2) == 3
    # the server's loader, with the thread count left to it (0 = auto): two batches at once
    settings = _settings(int2_data_dir, "int2", torch_threads=0)
    assert settings.batch_concurrency == 2
    model = load_onnx_runtime_model(settings)
    sessions = model.bundle.runner.sessions
    assert set(sessions) >= {"vision", "ocr", "cross_kv", "decoder_step"}
    for session in sessions.values():
        options = session.get_session_options()
        assert options.intra_op_num_threads == 4
        # a pool thread that spun between graphs would take the event loop's core
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_two_bit_weights_in_four_bit_containers_compute_what_the_shipped_graphs_compute(
    int2_data_dir: Path,
) -> None:
    codes = np.random.default_rng(0).integers(0, 4, (3, 5, 16), dtype=np.uint8)
    assert np.array_equal(unpack_low_first(pack_low_first(codes, 2), 2), codes)
    assert np.array_equal(unpack_low_first(pack_low_first(codes, 4), 4), codes)
    [bundle_dir] = (int2_data_dir / "bundles").glob("onnx-int2-*")
    files = {g: f"{g}.onnx" for g in ("vision", "decoder_step", "text_embed")}
    served = BundleSessions(bundle_dir, files, widen_2bit=True)
    shipped = BundleSessions(bundle_dir, files, widen_2bit=False)
    assert served.widened["decoder_step"] > 0 and sum(shipped.widened.values()) == 0
    # the bundled INT2's decoder holds quarter-code zero points (quantize --zero-points
    # decoder-quarter): the per-token graph needs no correction; the others' free ones do
    assert served.made_whole["decoder_step"] == 0 and served.made_whole["vision"] > 0
    spec = json.loads((bundle_dir / "bundle.json").read_text())["graphs"]
    rng = np.random.default_rng(1)
    for graph in files:
        inputs = {
            i["name"]: rng.standard_normal(i["shape"]).astype(np.float32)
            if i["dtype"] == "float32"
            else np.ones(i["shape"], dtype=i["dtype"])
            for i in spec[graph]["inputs"]
        }
        if graph == "decoder_step":
            inputs["position"] = np.array([5], dtype=np.int64)
        ours, theirs = served.run(graph, inputs), shipped.run(graph, inputs)
        for name in theirs:
            np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, rtol=0)


def _one_matmul_nbits(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, k: int, bits: int
) -> onnx.ModelProto:
    """A graph of one MatMulNBits, x (M, k) -> y (M, n), holding ``codes`` (n, blocks, block) with
    ``scales`` and float ``zeros`` (one per block), as a bundle ships it."""
    from onnx import TensorProto, helper, numpy_helper

    n, _, block = codes.shape
    node = helper.make_node(
        "MatMulNBits",
        ["x", "B", "S", "Z"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=[
            numpy_helper.from_array(pack_low_first(codes, bits), "B"),
            numpy_helper.from_array(scales, "S"),
            numpy_helper.from_array(zeros, "Z"),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("bits", [2, 4])
def test_float_zero_points_become_whole_ones_plus_an_exact_correction(bits: int) -> None:
    """A MatMulNBits with float zero points (free ones at INT2, QAT's learned ones at INT4: ONNX
    Runtime's slow path) is served as a 4-bit one with uint8 zero points plus the block-sum
    correction: the same products."""
    import onnxruntime as ort
    from onnx import numpy_helper

    rng = np.random.default_rng(2)
    k, n, block = 40, 24, 16  # a short last block too: 40 = 16 + 16 + 8
    blocks = -(-k // block)
    top = (1 << bits) - 1
    codes = rng.integers(0, top + 1, (n, blocks, block), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, n * blocks).astype(np.float32)
    zeros = rng.uniform(-0.2, top + 0.2, n * blocks).astype(np.float32)
    shipped = _one_matmul_nbits(codes, scales, zeros, k, bits)
    served = onnx.ModelProto()
    served.CopyFrom(shipped)
    assert widen_2bit_matmuls(served) == (bits == 2)
    assert whole_zero_points(served) == 1 and whole_zero_points(served) == 0  # once
    packed = [n for n in served.graph.node if n.op_type == "MatMulNBits"]
    assert [a.i for a in packed[0].attribute if a.name == "bits"] == [4]
    zero_points = {i.name: numpy_helper.to_array(i) for i in served.graph.initializer}["Z"]
    assert zero_points.dtype == np.uint8  # the kernel's fast path
    x = {"x": rng.standard_normal((3, k)).astype(np.float32)}
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (shipped, served)
    ]
    weight = (
        unpack_low_first(pack_low_first(codes, bits), bits) - zeros.reshape(n, blocks, 1)
    ) * scales.reshape(n, blocks, 1)
    want = x["x"] @ weight.reshape(n, -1)[:, :k].T
    for session in run:
        np.testing.assert_allclose(session.run(None, x)[0], want, atol=1e-5, rtol=1e-5)


def test_quarter_grid_zero_points_widen_to_whole_4bit_ones_with_no_correction() -> None:
    """2-bit zero points on the quarter-code grid (``quantize --zero-points quarter``) are whole
    4-bit ones once codes and zero points are multiplied by 4 and the scales divided by 4: the
    served node needs no correction nodes, and its weights dequantize to the shipped node's to
    the last bit. One zero point off the grid sends the node to the correction instead."""
    import onnxruntime as ort
    from onnx import numpy_helper

    rng = np.random.default_rng(3)
    k, n, block = 40, 24, 16
    blocks = -(-k // block)
    codes = rng.integers(0, 4, (n, blocks, block), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, n * blocks).astype(np.float32)
    zeros = (rng.integers(0, 13, n * blocks) / 4).astype(np.float32)  # 0, 0.25, ..., 3
    zeros[:2] = [0.0, 3.0]  # both ends of the grid
    shipped = _one_matmul_nbits(codes, scales, zeros, k, 2)
    served = onnx.ModelProto()
    served.CopyFrom(shipped)
    assert widen_2bit_matmuls(served) == 1
    assert whole_zero_points(served) == 0  # nothing left to correct
    assert [node.op_type for node in served.graph.node] == ["MatMulNBits"]
    held = {i.name: numpy_helper.to_array(i) for i in served.graph.initializer}
    assert held["Z"].dtype == np.uint8
    wide_codes = unpack_low_first(held["B"], 4).reshape(n, blocks, block)
    wide_zeros = unpack_low_first(held["Z"].reshape(n, -1), 4)[:, :blocks]
    dequantized = (wide_codes.astype(np.float32) - wide_zeros[..., None]) * held["S"].reshape(n, blocks, 1)
    weight = (codes.astype(np.float32) - zeros.reshape(n, blocks, 1)) * scales.reshape(n, blocks, 1)
    np.testing.assert_array_equal(dequantized, weight)
    x = {"x": rng.standard_normal((3, k)).astype(np.float32)}
    want = x["x"] @ weight.reshape(n, -1)[:, :k].T
    got = ort.InferenceSession(served.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    zeros[5] = 1.1  # off the grid
    off_grid = _one_matmul_nbits(codes, scales, zeros, k, 2)
    assert widen_2bit_matmuls(off_grid) == 1 and whole_zero_points(off_grid) == 1


def test_an_int4_bundle_with_learned_zero_points_is_served_on_the_fast_kernel_as_pytorch_answers(
    tmp_path: Path,
) -> None:
    """QAT's learned zero points ship as floats: the server makes them whole (with the exact
    correction) and still answers every task as the PyTorch INT4 model."""
    onnx_model = load_onnx_runtime_model(_settings(tmp_path, "int4"), export_examples=EXAMPLES)
    assert sum(onnx_model.bundle.runner.made_whole.values()) > 0  # type: ignore[attr-defined]
    torch_model = MobileMultiModalLLM.from_pretrained("default", quantization="int4")
    images = [e.image for e in load_eval_split("captioning", EXAMPLES)]
    assert onnx_model.generate_captions(images) == torch_model.generate_captions(images)
    vqa = load_eval_split("vqa", EXAMPLES)
    images, questions = [e.image for e in vqa], [e.question for e in vqa]
    assert onnx_model.answer_questions(images, questions) == torch_model.answer_questions(images, questions)
    lines = [e.image for e in load_eval_split("ocr", EXAMPLES)]
    assert onnx_model.extract_texts(lines) == torch_model.extract_texts(lines)


def test_the_memory_reported_is_what_the_sessions_hold(int2_data_dir: Path, fp32_bundle: Path) -> None:
    """Graphs as handed to ONNX Runtime (2-bit weights widened: more than the files) and the KV
    cache one answer's decode holds (both bound cache pairs and the image's cross keys/values)."""
    model = _onnx_model("int2", int2_data_dir, fp32_bundle)
    spec = json.loads((model.model_dir / "bundle.json").read_text())
    held = model.component_memory_bytes()
    assert set(held) == set(spec["graphs"])
    for graph, entry in spec["graphs"].items():
        on_disk = (model.model_dir / entry["file"]).stat().st_size
        if model.bundle.runner.widened[graph]:  # type: ignore[attr-defined]
            assert held[graph] > on_disk, graph  # four codes a byte on disk, two in the session
    assert kv_cache_peak_bytes(model) == 0  # nothing decoded yet
    model.generate_captions([ProbeCase.default().image])
    cache, cross = spec["kv_cache"]["shape"], spec["kv_cache"]["cross_shape"]
    new_slot = int(np.prod(cache)) // spec["kv_cache"]["max_len"]  # new_k: (L, 1, nh, 1, hs)
    expected = (2 * int(np.prod(cache)) + 2 * int(np.prod(cross)) + 2 * new_slot) * 4
    assert kv_cache_peak_bytes(model) == expected


def test_io_bound_decoding_computes_what_the_plain_contract_computes(int2_data_dir: Path) -> None:
    """The served decode keeps the KV cache in bound buffers (``BundleSessions.decoder_steps``,
    written in place); the plain contract (``step_caches.ArraySteps``) hands it to every ``run``. On
    the same sessions and tokens, through every slot of the cache: the same logits and caches bit
    for bit; and the whole loop gives the same answers and confidences."""
    onnx = _onnx_model("int2", int2_data_dir, Path())
    served = onnx.bundle
    sessions = served.runner
    shape = served.spec["kv_cache"]["shape"]
    plain = BundleModel(served.bundle, sessions, on_run=lambda *_: None)  # a hook sees every call
    images = [e.image for e in load_eval_split("captioning", 3)]
    for image in images:
        cross = served.run_graph("cross_kv", {"image_tokens": served.image_tokens(image, None)})
        assert isinstance(served.decoder_steps(cross), BoundDecoderSteps)
        assert isinstance(plain.decoder_steps(cross), ArraySteps)
        bound = sessions.decoder_steps(cross["cross_k"], cross["cross_v"], shape)
        arrays = ArraySteps(sessions.run, cross, shape)
        tokens = served.prompt("captioning")
        for position in range(served.spec["kv_cache"]["max_len"]):
            logits = arrays.step(tokens[position], position)
            assert np.array_equal(bound.step(tokens[position], position), logits), position
            assert np.array_equal(bound.cache[0], arrays.cache[0])
            assert np.array_equal(bound.cache[1], arrays.cache[1])
            if position + 1 >= len(tokens):
                tokens.append(int(np.argmax(logits[0])))  # free decoding: every slot gets written
    for image in images:
        for task, question in (("captioning", None), ("vqa", "what color is the circle ?")):
            tokens, prompt = served.image_tokens(image, question), served.prompt(task, question or "")
            ours: list[float] = []
            theirs: list[float] = []
            answer = served.greedy(tokens, prompt, 32, log_probs=ours)
            assert answer == plain.greedy(tokens, prompt, 32, log_probs=theirs)
            assert len(answer) > 1 and ours == theirs


def test_io_bound_batch_steps_compute_what_the_plain_batch_contract_computes(int2_data_dir: Path) -> None:
    """A batch's bound buffers (``BundleSessions.batch_steps``) against the plain batch contract
    (``ArrayBatchSteps``) on the same sessions and tokens: the same logits and caches bit for bit,
    also after rows leave (the kept rows' caches re-bound; a row selection not laid out in C order
    was once bound and silently not written)."""
    onnx = _onnx_model("int2", int2_data_dir, Path())
    served, sessions = onnx.bundle, onnx.bundle.runner
    shape = served.spec["kv_cache"]["shape"]
    images = [e.image for e in load_eval_split("captioning", 5)]
    crosses = [served.run_graph("cross_kv", {"image_tokens": served.image_tokens(i, None)}) for i in images]
    cross_k = np.concatenate([c["cross_k"] for c in crosses], axis=1)
    cross_v = np.concatenate([c["cross_v"] for c in crosses], axis=1)
    bound = sessions.batch_steps(cross_k, cross_v, shape)
    arrays = ArrayBatchSteps(sessions.run, cross_k, cross_v, shape)
    rng = np.random.default_rng(0)
    rows = len(images)
    for position in range(served.spec["kv_cache"]["max_len"]):
        tokens = rng.integers(0, len(served.tokenizer.vocab), rows).tolist()
        logits = arrays.step(tokens, position)
        assert np.array_equal(bound.step(tokens, position), logits), position
        assert all(np.array_equal(b, a) for b, a in zip(bound.cache, arrays.cache, strict=True))
        if position in (3, 9, 20):  # rows leave: the middle one, then the first, then the last
            keep = {3: [0, 1, 3, 4], 9: [1, 2, 3], 20: [0, 1]}[position]
            bound.keep(keep)
            arrays.keep(keep)
            rows = len(keep)
    assert rows == 2

    # rows join a running batch (continuous batching): empty caches, each row at its own position
    bound = sessions.batch_steps(cross_k[:, :2], cross_v[:, :2], shape)
    arrays = ArrayBatchSteps(sessions.run, cross_k[:, :2], cross_v[:, :2], shape)
    positions = [0, 0]
    for step in range(30):
        if step in (4, 11):  # two rows join, then one more
            extra = slice(2, 4) if step == 4 else slice(4, 5)
            bound.join(cross_k[:, extra], cross_v[:, extra])
            arrays.join(cross_k[:, extra], cross_v[:, extra])
            positions += [0] * (extra.stop - extra.start)
        if step == 17:  # the second row leaves
            keep = [0, 2, 3, 4]
            bound.keep(keep)
            arrays.keep(keep)
            positions = [positions[i] for i in keep]
        tokens = rng.integers(0, len(served.tokenizer.vocab), len(positions)).tolist()
        logits = arrays.step(tokens, positions)
        assert np.array_equal(bound.step(tokens, positions), logits), step
        assert all(np.array_equal(b, a) for b, a in zip(bound.cache, arrays.cache, strict=True))
        positions = [p + 1 for p in positions]
    assert positions == [30, 26, 26, 19]
    # a row's slot beyond its own position stays empty: each row wrote only its own slots
    self_k = arrays.cache[0]
    assert not self_k[:, 3, :, 19:].any() and self_k[:, 3, :, 18].any()


@pytest.mark.parametrize("plain", [False, True])
def test_rows_joining_a_running_decode_answer_as_each_row_alone(int2_data_dir: Path, plain: bool) -> None:
    """``RunningDecode`` (the continuous batcher's decode on ONNX Runtime): captions and answers
    join at different steps, each at its own position, and leave at their own ends; every row's
    tokens and log-probabilities are the bundle's one-row loop's. ``plain``: the plain contract
    (an ``on_run`` hook sees every call) instead of the bound buffers."""
    served = _onnx_model("int2", int2_data_dir, Path()).bundle
    calls: list[tuple[str, int]] = []  # (graph, rows) of every call, on the plain contract

    def record(graph: str, inputs: dict[str, np.ndarray], _: object) -> None:
        calls.append((graph, len(next(iter(inputs.values())))))

    model = BundleModel(served.bundle, served.runner, on_run=record) if plain else served
    assert served.has_prefill  # the server's own export reads a joining group's prompts in one call
    captions = [e.image for e in load_eval_split("captioning", 5)]
    vqa = load_eval_split("vqa", 4)
    requests: list[tuple[np.ndarray, list[int], int]] = []
    for image, budget in zip(captions, [32, 4, 32, 9, 32], strict=True):
        requests.append((served.image_tokens(image, None), served.prompt("captioning"), budget))
    for example in vqa:
        tokens = served.image_tokens(example.image, example.question)
        requests.append((tokens, served.prompt("vqa", example.question), 8))
    joins = {0: [0, 1], 2: [5, 6], 5: [2], 9: [3, 7, 8], 14: [4]}  # step -> requests joining

    running = RunningDecode(model)
    answers: dict[int, DecodedAnswer] = {}
    step = 0
    while len(running) or step <= max(joins):
        for i in joins.get(step, []):
            tokens, prompt, budget = requests[i]
            running.add(tokens, [DecodeRequest(prompt, budget, tag=i)])
        for done in running.step():
            answers[done.tag] = done
        step += 1
    assert sorted(answers) == list(range(len(requests)))
    for i, (tokens, prompt, budget) in enumerate(requests):
        log_probs: list[float] = []
        assert answers[i].ids == served.greedy(tokens, prompt, budget, log_probs=log_probs), i
        assert answers[i].log_probs == pytest.approx(log_probs, abs=1e-5)  # batched kernels round apart
    assert len({len(a.ids) for a in answers.values()}) > 2  # rows ended at different steps
    if plain:  # one prefill call per row added, and every row's every step gives it a token
        assert [g for g, _ in calls].count("prefill") == len(requests)
        row_steps = sum(rows for g, rows in calls if g == "decoder_step")
        assert row_steps == sum(len(a.ids) for a in answers.values())


def test_a_request_that_gives_up_leaves_the_running_decode_at_its_next_step(int2_data_dir: Path) -> None:
    """Continuous decoding on ONNX Runtime under cancellation: a request whose stop is set mid-
    decode leaves at the next step with the words it had, one stopped before admission costs
    nothing, and its neighbours decode on to their own answers."""
    model = _onnx_model("int2", int2_data_dir, Path())
    decoding = BundleTaskDecoding(model)
    images = [e.image for e in load_eval_split("captioning", 3)]
    full = [model.generate_captions([image])[0] for image in images]
    stops = [threading.Event() for _ in images]
    early = threading.Event()
    early.set()
    requests = [
        TaskRequest("captioning", image, 32, stop=stop, tag=i)
        for i, (image, stop) in enumerate(zip(images, stops, strict=True))
    ]
    done, refused = decoding.admit(
        [*requests, TaskRequest("captioning", images[0], 32, stop=early, tag="early")]
    )
    assert not refused and [(r.tag, r.text, r.stopped) for r in done] == [("early", "", True)]
    results: dict[object, TaskResult] = {}
    prompt = model.bundle.prompt("captioning")
    reading = len(prompt) - model.bundle.prefilled(prompt)  # steps on the prompt ('prefill' read the rest)
    for step in range(64):
        if step == reading + 1:  # request 1 has two answer words by now
            stops[1].set()
        results.update((r.tag, r) for r in decoding.step())
        if not len(decoding):
            break
    assert not len(decoding) and sorted(results) == [0, 1, 2]
    assert results[0].text == full[0] and results[2].text == full[2]
    assert results[1].stopped and results[1].text == " ".join(full[1].split()[:2])


def test_continuous_batching_on_onnx_runtime_answers_as_each_request_alone(int2_data_dir: Path) -> None:
    """``MOBILE_MM_BATCHING=continuous`` with ``--runtime onnxruntime``: more requests than rows,
    captions of different budgets and questions joining as rows free; each result is what the
    model gives the request alone (text and confidence)."""
    settings = _settings(int2_data_dir, "int2", batching="continuous", max_batch_size=4)
    model = load_model(settings)
    assert isinstance(model, OnnxRuntimeModel)
    captions = [e.image for e in load_eval_split("captioning", 6)]
    budgets = [32, 3, 12, 32, 5, 20]
    vqa = load_eval_split("vqa", 4)

    async def main() -> list[Any]:
        engine = InferenceEngine(settings, loader=lambda _: model)
        await engine.start()
        try:
            assert await engine.wait_ready(120), engine.error
            assert isinstance(engine.batcher, ContinuousBatcher)
            jobs = [engine.admit("captioning", Job(img), n) for img, n in zip(captions, budgets, strict=True)]
            jobs += [engine.admit("vqa", Job(e.image, question=e.question), 8) for e in vqa]
            return await asyncio.wait_for(asyncio.gather(*jobs), 120)
        finally:
            await asyncio.wait_for(engine.stop(), 60)

    outcomes = asyncio.run(main())
    assert max(o.batch_size for o in outcomes) == 4
    for o, image, n in zip(outcomes[: len(captions)], captions, budgets, strict=True):
        confidences: list[float] = []
        assert o.result["caption"] == model.generate_captions([image], n, confidences=confidences)[0]
        assert o.result["confidence"] == pytest.approx(confidences[0], abs=2e-6)
        # the domain check: from the caption's own decode at 32 tokens, the check's own below
        [flag], [score], [agreement] = model.out_of_domain([image])
        assert o.result["out_of_domain"] is flag is False
        assert o.result["domain_score"] == pytest.approx(score, abs=2e-6)
        assert o.result["domain_agreement"] == pytest.approx(agreement, abs=2e-6)
    for o, e in zip(outcomes[len(captions) :], vqa, strict=True):
        assert o.result["answer"] == model.answer_question(e.image, e.question)


def test_float_weights_are_the_dequantized_codes_and_decode_the_same_answers(int2_data_dir: Path) -> None:
    """``float_weights=True`` (not served by default) runs every MatMulNBits as a float MatMul on
    ``(code - zero) * scale``: no packed weight is left, the graphs compute what the shipped ones
    compute, and the eval captions and answers are the served model's."""
    [bundle_dir] = (int2_data_dir / "bundles").glob("onnx-int2-*")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    floats = OnnxRuntimeModel.open(bundle_dir, manifest, float_weights=True)
    served = OnnxRuntimeModel.open(bundle_dir, manifest)
    sessions = floats.bundle.runner
    assert sessions.dequantized["decoder_step"] > 0 and sum(sessions.widened.values()) == 0
    proto = onnx.load(str(bundle_dir / "decoder_step.onnx"))
    packed = {n.input[1] for n in proto.graph.node if n.op_type == "MatMulNBits"}
    assert dequantize_matmuls(proto) == len(packed) == sessions.dequantized["decoder_step"] > 0
    assert not [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert not packed & {i.name for i in proto.graph.initializer}  # the packed codes are gone
    shipped = BundleSessions(bundle_dir, {"decoder_step": "decoder_step.onnx"}, widen_2bit=False)
    spec = json.loads((bundle_dir / "bundle.json").read_text())["graphs"]["decoder_step"]
    rng = np.random.default_rng(2)
    inputs = {
        i["name"]: rng.standard_normal(i["shape"]).astype(np.float32)
        if i["dtype"] == "float32"
        else np.full(i["shape"], 5, dtype=i["dtype"])
        for i in spec["inputs"]
    }
    ours, theirs = sessions.run("decoder_step", inputs), shipped.run("decoder_step", inputs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, rtol=0)
    images = [e.image for e in load_eval_split("captioning", 4)]
    assert floats.generate_captions(images) == served.generate_captions(images)
    vqa = load_eval_split("vqa", 4)
    questions = [e.question for e in vqa]
    assert floats.answer_questions([e.image for e in vqa], questions) == served.answer_questions(
        [e.image for e in vqa], questions
    )
    # what MOBILE_MM_ONNX_WEIGHTS=float serves (the default, packed, is the served model above)
    loaded = load_onnx_runtime_model(_settings(int2_data_dir, "int2", onnx_weights="float"))
    assert loaded.get_model_info()["matmul_nbits_as_float"] == sum(sessions.dequantized.values())
    assert loaded.get_model_info()["matmul_nbits_2bit_widened"] == 0
    assert served.get_model_info()["matmul_nbits_as_float"] == 0
    assert loaded.generate_captions(images) == served.generate_captions(images)


def test_the_integrity_loop_watches_the_served_bundles_files(
    onnx_server: LiveServer, int2_data_dir: Path
) -> None:
    [bundle_dir] = (int2_data_dir / "bundles").glob("onnx-int2-*")
    graph = bundle_dir / "decoder_step.onnx"
    original = graph.read_bytes()
    _wait_metric(onnx_server, "model_integrity_ok", 1)
    try:
        graph.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one flipped byte
        _wait_metric_below(onnx_server, "model_integrity_ok", 1)
    finally:
        graph.write_bytes(original)
    _wait_metric(onnx_server, "model_integrity_ok", 1)  # restored: healthy again


def _wait_metric_below(server: LiveServer, name: str, below: float) -> None:
    deadline = time.monotonic() + 120
    with server.client() as client:
        while metric_value(client.get("/metrics").text, name) >= below:
            assert time.monotonic() < deadline, f"{name} stayed at or above {below} for 120 s"
            time.sleep(0.1)


@pytest.mark.slow
def test_mobile_mm_serve_runtime_onnxruntime_with_workers(int2_data_dir: Path, tmp_path: Path) -> None:
    """The real command: flags -> settings -> each worker's app factory -> ONNX Runtime."""
    [bundle_dir] = (int2_data_dir / "bundles").glob("onnx-int2-*")
    args = [
        "--runtime",
        "onnxruntime",
        "--bundle",
        str(bundle_dir),
        "--quantization",
        "int2",
        "--workers",
        "2",
    ]
    with ServeProcess(tmp_path, env={"MOBILE_MM_DEVICE": "cpu"}, args=args) as server:
        deadline = time.monotonic() + 300  # /ready came from one worker; the other may still load
        while True:
            answer = httpx.post(
                server.url + "/inference", json={"image": data_uri(), "task": "captioning"}, timeout=60
            )
            if answer.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert ProbeCase.default().is_correct(answer.json()["result"]["caption"])
        metrics_text = httpx.get(server.url + "/metrics", timeout=60).text
    assert metric_value(metrics_text, "model_info", runtime="onnxruntime", quantization="int2") >= 1
    assert metric_value(metrics_text, "model_info", runtime="pytorch") == 0


def test_the_exported_bundle_is_one_per_model_precision_and_release(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    def bundle_dir(model: Path, quantization: str = "fp32") -> Path:
        return default_bundle_dir(_settings(tmp_path, quantization, model=str(model)))

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "version": "0.2.0"}))
    assert bundle_dir(tiny_model_dir) == bundle_dir(tiny_model_dir)  # reused across restarts
    assert bundle_dir(tiny_model_dir) != bundle_dir(other)  # a new model: a new export
    assert bundle_dir(tiny_model_dir).parent == tmp_path / "bundles"
    assert default_bundle_dir(_settings(tmp_path, "int2")).name.startswith("onnx-int2-")
    with pytest.raises(ModelLoadError):  # no int2 variant of the tiny model: nothing to export
        bundle_dir(tiny_model_dir, "int2")
    # a changed exporter (same release, e.g. a checkout between tags) writes another bundle
    exporter = tmp_path / "export"
    shutil.copytree(Path(export_package.__file__).parent, exporter)
    before = bundle_dir(tiny_model_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_package, "__file__", str(exporter / "__init__.py"))
        assert bundle_dir(tiny_model_dir) == before  # the same sources: the same bundle
        (exporter / "graphs.py").write_text((exporter / "graphs.py").read_text() + "\n# changed\n")
        assert bundle_dir(tiny_model_dir) != before


def test_a_reload_switches_the_runtime_without_a_restart(int2_data_dir: Path, tmp_path: Path) -> None:
    """What SIGHUP runs, with MOBILE_MM_RUNTIME changed: PyTorch -> ONNX Runtime -> PyTorch."""
    [bundle_dir] = (int2_data_dir / "bundles").glob("onnx-int2-*")
    pytorch = make_settings(tmp_path, model="default", quantization="int2", torch_threads=1)
    server = LiveServer(pytorch, load_model).start()
    try:
        server.wait_ready()
        for settings, runtime in (
            (pytorch.model_copy(update={"runtime": "onnxruntime", "bundle": bundle_dir}), "onnxruntime"),
            (pytorch, "pytorch"),
        ):
            reloader = server.app.state.reloader
            reloader.settings_loader = lambda s=settings: s
            loop = server.app.state.duties.loop
            outcome = asyncio.run_coroutine_threadsafe(reloader.reload(), loop).result(timeout=300)
            assert outcome.model == "reloaded", outcome
            assert server.app.state.engine.info["runtime"] == runtime
            # two batches at once on ONNX Runtime, one on PyTorch
            assert server.app.state.engine.batcher.concurrency == (2 if runtime == "onnxruntime" else 1)
            with server.client() as client:
                caption = client.post("/inference", json={"image": data_uri(), "task": "captioning"})
                metrics_text = client.get("/metrics").text
            assert caption.status_code == 200 and ProbeCase.default().is_correct(
                caption.json()["result"]["caption"]
            )
            assert metric_value(metrics_text, "model_info", runtime=runtime) == 1
            assert metric_value(metrics_text, "model_info") == 1  # the other runtime's series is gone
    finally:
        server.stop()


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_a_batch_decoded_together_answers_as_each_row_alone(
    quantization: str, int2_data_dir: Path, fp32_bundle: Path
) -> None:
    """decoder_step's dynamic batch axis: one call per step for every row (greedy_batch) gives each
    row the tokens and confidences the bundle's own one-row loop gives it, with prompts of
    different lengths (questions) and rows finishing at different steps."""
    onnx = _onnx_model(quantization, int2_data_dir, fp32_bundle)
    assert onnx.batched, "the export wrote decoder_step with a fixed batch"
    inputs = {i.name: i.shape for i in onnx.bundle.runner.sessions["decoder_step"].get_inputs()}
    assert inputs["token"][0] == inputs["self_k_0"][0] == "batch"

    def both(call: Any) -> tuple[Any, Any]:
        onnx.batched = True
        together_conf: list[float] = []
        together = call(together_conf)
        onnx.batched = False
        alone_conf: list[float] = []
        alone = call(alone_conf)
        onnx.batched = True
        np.testing.assert_allclose(together_conf, alone_conf, atol=1e-5)
        return together, alone

    captions = [e.image for e in load_eval_split("captioning", 12)]
    together, alone = both(lambda conf: onnx.generate_captions(captions, confidences=conf))
    assert together == alone
    assert len({len(c.split()) for c in together}) > 1  # rows left the batch at different steps
    vqa = load_eval_split("vqa", 12)
    images, questions = [e.image for e in vqa], [e.question for e in vqa]
    assert len({len(onnx.bundle.prompt("vqa", q)) for q in questions}) > 1
    together, alone = both(lambda conf: onnx.answer_questions(images, questions, confidences=conf))
    assert together == alone
    # a short budget ends every row at the same step
    together, alone = both(lambda conf: onnx.generate_captions(captions[:3], max_tokens=2, confidences=conf))
    assert together == alone and all(len(c.split()) <= 2 for c in together)


@pytest.mark.parametrize("quantization", ["fp32", "int2"])
def test_text_lines_and_retrieval_inputs_run_as_one_batch_each_row_as_alone(
    quantization: str, int2_data_dir: Path, fp32_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ocr, image_embed and text_embed take a batch too (as vision does): a server's batch of text
    lines or retrieval inputs is one call per graph, each row what the bundle's one-row loop gives."""
    onnx = _onnx_model(quantization, int2_data_dir, fp32_bundle)
    calls: list[str] = []
    runner = onnx.bundle.runner
    run = runner.run
    monkeypatch.setattr(runner, "run", lambda graph, inputs: (calls.append(graph), run(graph, inputs))[1])

    lines = [e.image for e in load_eval_split("ocr", 12)]
    texts = onnx.extract_texts(lines)
    assert calls == ["ocr"]
    assert texts == onnx.bundle.extract_texts(lines) and len(set(texts)) > 1
    assert calls.count("ocr") == 1 + len(lines)  # the one-row loop: a call per line

    calls.clear()
    retrieval = load_eval_split("retrieval", 12)
    images, captions = [e.image for e in retrieval], [e.text for e in retrieval]
    together = onnx.get_image_embeddings(images)
    assert calls == ["vision", "image_embed"]
    np.testing.assert_allclose(together, onnx.bundle.get_image_embeddings(images), atol=1e-5, rtol=0)
    calls.clear()
    together = onnx.get_text_embeddings(captions)
    assert calls == ["text_embed"]
    np.testing.assert_allclose(together, onnx.bundle.get_text_embeddings(captions), atol=1e-5, rtol=0)
    assert together.shape == (len(captions), onnx.get_image_embeddings(images[:1]).shape[1])


def test_a_row_whose_request_gives_up_mid_batch_ends_alone(int2_data_dir: Path, fp32_bundle: Path) -> None:
    onnx = _onnx_model("int2", int2_data_dir, fp32_bundle)
    images = [e.image for e in load_eval_split("captioning", 3)]
    full = onnx.generate_captions(images)
    # the middle request gives up once the decode has made its first steps (set from inside the
    # batch's decoder steps, so the moment is exact on any machine)
    gave_up = threading.Event()
    prompt = len(onnx.bundle.prompt("captioning"))
    make_steps = onnx.bundle.runner.batch_steps

    def counted_steps(*args: Any) -> Any:
        steps = make_steps(*args)
        step = steps.step

        def counting(tokens: Any, position: int) -> np.ndarray:
            if position == prompt + 1:  # its answer holds two tokens
                gave_up.set()
            return step(tokens, position)

        steps.step = counting
        return steps

    onnx.bundle.runner.batch_steps = counted_steps  # type: ignore[method-assign]
    try:
        captions = onnx.generate_captions(images, stop=[threading.Event(), gave_up, threading.Event()])
    finally:
        del onnx.bundle.runner.batch_steps
    assert captions[0] == full[0] and captions[2] == full[2]
    assert captions[1] == " ".join(full[1].split()[:2])  # the two tokens it had when it gave up


def test_two_batches_run_at_once_and_every_answer_is_the_models_own(
    int2_data_dir: Path, fp32_bundle: Path
) -> None:
    """The ONNX Runtime server runs two static batches at once (settings.batch_concurrency): many
    concurrent requests of every task, each answered as the model answers it alone. (Last in the
    module: a server started here resets the process's canary gauges, which the canary test reads
    from the module's shared server.)"""
    server = LiveServer(_settings(int2_data_dir, "int2", canary_interval_s=0), load_model).start()
    try:
        server.wait_ready()
        _answers_under_concurrent_load(server, int2_data_dir, fp32_bundle)
    finally:
        server.stop()


def _answers_under_concurrent_load(server: LiveServer, int2_data_dir: Path, fp32_bundle: Path) -> None:
    engine = server.app.state.engine
    assert engine.settings.batch_concurrency == 2 and engine.batcher.concurrency == 2
    direct = _onnx_model("int2", int2_data_dir, fp32_bundle)
    scenes = load_eval_split("vqa", 12)
    lines = [e.image for e in load_eval_split("ocr", 12)]
    bodies = [
        *({"image": data_uri(e.image), "task": "captioning"} for e in scenes),
        *({"image": data_uri(e.image), "task": "vqa", "question": e.question} for e in scenes),
        *({"image": data_uri(line), "task": "ocr"} for line in lines),
    ]
    expected = [
        *direct.generate_captions([e.image for e in scenes]),
        *direct.answer_questions([e.image for e in scenes], [e.question for e in scenes]),
        *direct.extract_texts(lines),
    ]
    batches_before = engine.batcher.batches_run

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/inference", json=b) for b in bodies))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(bodies)
    field = {"captioning": "caption", "vqa": "answer", "ocr": "text"}
    got = [r.json()["result"][field[b["task"]]] for r, b in zip(responses, bodies, strict=True)]
    assert got == expected
    assert engine.batcher.batches_run > batches_before


def test_ocr_reads_with_the_language_model_the_model_ships_on_either_runtime(int2_data_dir: Path) -> None:
    # MOBILE_MM_OCR_DECODING=auto (the default): PyTorch reads with the language model the model
    # directory ships; the exported bundle carries it and describes the search (tasks.ocr), and
    # ONNX Runtime reads the same text with it. Nothing is fitted, nothing cached.
    # users' kinds of lines (the generator's the bundled model reads right 39 times in 40 either
    # way): INT2 reads 29 of these 40 with the language model, 21 greedily
    lines = load_user_split("user_ocr_mixed", 40)
    images, targets = [e.image for e in lines], [e.text for e in lines]
    torch_model = load_model(make_settings(int2_data_dir, quantization="int2", torch_threads=1))
    assert torch_model.get_model_info()["ocr_decoding"] == "lm"
    onnx = load_model(_settings(int2_data_dir, "int2"))
    assert onnx.get_model_info()["ocr_decoding"] == "lm"
    bundle = load_bundle(onnx.model_dir)
    assert bundle.description["tasks"]["ocr"]["decode"] == "ctc_prefix_beam_lm"
    assert "ocr_lm.json.gz" in [f["path"] for f in onnx.manifest["files"]]
    read = onnx.extract_texts(images)
    assert read == torch_model.extract_texts(images)
    assert not (int2_data_dir / "ocr_lm").exists()
    greedy = load_model(_settings(int2_data_dir, "int2", ocr_decoding="greedy"))
    assert greedy.get_model_info()["ocr_decoding"] == "greedy"

    def right(texts: list[str]) -> int:
        return sum(t == target for t, target in zip(texts, targets, strict=True))

    assert right(read) > right(greedy.extract_texts(images))
    # the validation's reader follows the bundle's description as an app would
    assert BundleModel(bundle, TorchGraphRunner(build_graphs(torch_model))).extract_texts(images) == read


def test_a_model_that_ships_no_language_model_reads_greedily_unless_lm_is_asked(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # auto: greedy (nothing to read with); lm: fitted on the first start, cached in the data
    # directory, read from there after it
    auto = load_model(make_settings(tmp_path, model=str(tiny_model_dir), torch_threads=1))
    assert auto.get_model_info()["ocr_decoding"] == "greedy" and not (tmp_path / "ocr_lm").exists()
    fitted = load_model(
        make_settings(tmp_path, model=str(tiny_model_dir), ocr_decoding="lm", torch_threads=1)
    )
    assert fitted.get_model_info()["ocr_decoding"] == "lm"
    assert len(list((tmp_path / "ocr_lm").glob("*.json.gz"))) == 1
