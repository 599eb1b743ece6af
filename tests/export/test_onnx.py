"""ONNX bundles run in ONNX Runtime and score what PyTorch scores at the same precision; the
low-bit ones carry our own packed codes as MatMulNBits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.export import onnx as onnx_format
from mobile_multimodal.export.decode import BundleModel, load_bundle
from mobile_multimodal.export.graphs import build_graphs
from mobile_multimodal.export.onnx import (
    OnnxGraphRunner,
    block_size_for,
    matmul_nbits_exact,
    matmul_nbits_tensors,
)
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.quantization.schemes import params_from_range, quantize_rtn, quantize_with

from .conftest import BuiltBundle


def _run_matmul_nbits(
    tensors: dict[str, np.ndarray], k: int, n: int, bits: int, block: int, x: np.ndarray
) -> np.ndarray:
    inits = [numpy_helper.from_array(v, name) for name, v in tensors.items()]
    node = helper.make_node(
        "MatMulNBits", ["x", *tensors], ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*x.shape[:-1], n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("bits", "group", "k"), [(2, 80, 160), (2, 80, 384), (4, 80, 400), (8, None, 96), (8, None, 640)]
)
def test_matmul_nbits_computes_our_dequantized_weight(bits: int, group: int | None, k: int) -> None:
    torch.manual_seed(bits + k)
    weight = torch.randn(48, k)
    qw = quantize_rtn(weight, bits, group)
    block = block_size_for(qw.group_size)
    assert block is not None and qw.group_size % block == 0 and matmul_nbits_exact(qw)
    x = np.random.default_rng(0).standard_normal((1, 5, k)).astype(np.float32)
    got = _run_matmul_nbits(matmul_nbits_tensors(qw, block), k, 48, bits, block, x)
    want = x @ qw.dequantize().numpy().T
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)  # float summation order only


@pytest.mark.parametrize("bits", [4, 2])  # QAT's free ones; --zero-points free
def test_fractional_zero_points_are_kept_as_floats(bits: int) -> None:
    weight = torch.randn(32, 160)
    lo, hi = weight.reshape(32, 2, 80).amin(-1), weight.reshape(32, 2, 80).amax(-1)
    scale, zero = params_from_range(lo, hi, bits, step=0)
    assert bool((zero != zero.round()).any())
    qw = quantize_with(weight, scale, zero, bits, 80)
    tensors = matmul_nbits_tensors(qw, 16)
    assert tensors["zero_points"].dtype == np.float32
    x = np.random.default_rng(1).standard_normal((3, 160)).astype(np.float32)
    got = _run_matmul_nbits(tensors, 160, 32, bits, 16, x)
    np.testing.assert_allclose(got, x @ qw.dequantize().numpy().T, atol=1e-4, rtol=0)
    assert not matmul_nbits_exact(quantize_with(weight, scale.mean(1, keepdim=True), zero[:, :1], 8, 160))


def _ops(bundle: BuiltBundle, graph: str) -> list[onnx.NodeProto]:
    return list(onnx.load(str(bundle.out / f"{graph}.onnx")).graph.node)


def _assert_parity(bundle: BuiltBundle) -> None:
    v = bundle.manifest["validation"]
    assert v["executed"] is True and v["runtime"] == "onnxruntime" and v["passed"] is True
    assert set(v["tasks"]) >= {"captioning", "ocr", "ocr_unseen_fonts", "vqa", "retrieval"}
    assert v["tasks"] == v["reference"]  # the same scores as PyTorch at this precision
    assert v["max_abs_diff"] < 1e-3
    assert set(v["max_abs_diff_by_graph"]) == {
        "vision",
        "ocr",
        "cross_kv",
        "decoder_step",
        "image_embed",
        "text_embed",
        "prefill",
    }
    assert v["tasks"]["vqa"] > 0.7 and v["tasks"]["ocr"] > 0.6  # a model that works, not two broken ones


def test_fp32_bundle_matches_pytorch_in_onnx_runtime(onnx_fp32: BuiltBundle) -> None:
    _assert_parity(onnx_fp32)
    assert not any(n.op_type in ("MatMulNBits", "DequantizeLinear") for n in _ops(onnx_fp32, "decoder_step"))


def test_decoder_step_reads_no_size_at_run_time(onnx_fp32: BuiltBundle) -> None:
    """Every size of the step but the batch is a constant of the graph (``DecoderStepGraph``): a
    size read off a tensor exports as Shape -> Gather -> Unsqueeze -> Concat nodes that every
    runtime runs at every token (1,138 nodes, about half of them such lookups, before). The
    token's state is a matrix, so each projection is one Gemm with its bias."""
    ops = [n.op_type for n in _ops(onnx_fp32, "decoder_step")]
    assert "Shape" not in ops and "Transpose" in ops  # transposes: only k^T in the attention scores
    assert ops.count("Transpose") == 12  # 4 layers x (cache keys, own key, image keys)
    assert ops.count("Gemm") == 28  # 4 layers x (q, kv, out; cross q, out; fc1, fc2)
    assert len(ops) < 400


def test_prefill_takes_any_batch_and_prompt_length_and_computes_what_pytorch_computes(
    onnx_fp32: BuiltBundle,
) -> None:
    """The ONNX bundle carries 'prefill' with a dynamic batch and prompt axis, says so in
    bundle.json (and that captions and answers run it), masks by an addition, and computes
    PyTorch's prompt keys/values for a batch of long prompts and for one short one."""
    bundle = json.loads((onnx_fp32.out / "bundle.json").read_text())
    described = bundle["graphs"]["prefill"]
    assert described["prompt_axes"] == {"tokens": 1, "prompt_k": 3, "prompt_v": 3}
    assert described["batch_axes"] == {"tokens": 0, "cross_k": 1, "cross_v": 1, "prompt_k": 1, "prompt_v": 1}
    assert bundle["tasks"]["vqa"]["graphs"] == ["vision", "cross_kv", "prefill", "decoder_step"]
    assert "prefill" in bundle["kv_cache"]["prefill"] and "prefill" in " ".join(bundle["decode_loop"])
    ops = [n.op_type for n in _ops(onnx_fp32, "prefill")]
    assert "IsNaN" not in ops and "Where" not in ops
    model = MobileMultiModalLLM.from_pretrained("default")
    spec = next(g for g in build_graphs(model, prefill=True) if g.name == "prefill")
    session = ort.InferenceSession(str(onnx_fp32.out / "prefill.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    cross_shape = bundle["kv_cache"]["cross_shape"]
    for rows, length in ((3, 10), (1, 2)):
        cross = rng.standard_normal((cross_shape[0], rows, *cross_shape[2:]), dtype=np.float32)
        tokens = rng.integers(4, 40, (rows, length)).astype(np.int64)
        got = session.run(None, {"tokens": tokens, "cross_k": cross, "cross_v": cross})
        with torch.no_grad():
            want = spec.module(torch.from_numpy(tokens), torch.from_numpy(cross), torch.from_numpy(cross))
        for g, w in zip(got, want, strict=True):
            assert g.shape == (cross_shape[0], rows, cross_shape[2], length, cross_shape[4])
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


def test_vision_masks_its_question_by_an_addition_and_computes_what_pytorch_computes(
    onnx_fp32: BuiltBundle,
) -> None:
    """The fused question's padding is masked by an additive bias in the exported ``vision``
    (``AdditiveMaskAttention``), not Where/IsNaN; the image tokens are PyTorch's to float
    rounding with a question of 5 words, of none and of every slot filled."""
    ops = [n.op_type for n in _ops(onnx_fp32, "vision")]
    assert "IsNaN" not in ops and "Where" not in ops
    model = MobileMultiModalLLM.from_pretrained("default")
    spec = next(g for g in build_graphs(model) if g.name == "vision")
    session = ort.InferenceSession(str(onnx_fp32.out / "vision.onnx"), providers=["CPUExecutionProvider"])
    image, ids, _ = (t.numpy() for t in spec.example_inputs)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (3, *image.shape[1:])).astype(np.float32)
    ids = rng.integers(4, 40, (3, ids.shape[1])).astype(np.int64)
    mask = np.zeros_like(ids)
    mask[0, :5], mask[2, :] = 1, 1  # five words; none; every slot
    ours = session.run(None, {"image": image, "question_ids": ids, "question_mask": mask})[0]
    with torch.no_grad():
        theirs = spec.module(torch.from_numpy(image), torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_vision_takes_any_question_length_and_a_caption_passes_no_slot(onnx_fp32: BuiltBundle) -> None:
    """The question axis is free in the ONNX vision graph (bundle.json says so): 0 slots, the
    question's own and all 36 give the same image tokens, and the bundle's decode passes the
    fewest: none for a caption, a batch's longest question for VQA."""
    bundle = json.loads((onnx_fp32.out / "bundle.json").read_text())
    assert bundle["graphs"]["vision"]["question_axes"] == {"question_ids": 1, "question_mask": 1}
    assert all("question_axes" not in g for n, g in bundle["graphs"].items() if n != "vision")
    session = ort.InferenceSession(str(onnx_fp32.out / "vision.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    side = bundle["image_preprocessing"]["scene"]["height"]
    image = rng.uniform(-1, 1, (2, 3, side, side)).astype(np.float32)
    words = rng.integers(4, 40, (2, 5)).astype(np.int64)

    def tokens(slots: int, real: int) -> np.ndarray:
        ids = np.zeros((2, slots), np.int64)
        mask = np.zeros((2, slots), np.int64)
        ids[:, :real], mask[:, :real] = words[:, :real], 1
        out: np.ndarray = session.run(None, {"image": image, "question_ids": ids, "question_mask": mask})[0]
        return out

    np.testing.assert_allclose(tokens(0, 0), tokens(36, 0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(tokens(5, 5), tokens(36, 5), atol=1e-5, rtol=0)
    assert np.abs(tokens(5, 5) - tokens(0, 0)).max() > 1e-3  # the question does change them

    seen: list[tuple[int, ...]] = []
    model = BundleModel(
        load_bundle(onnx_fp32.out),
        OnnxGraphRunner(onnx_fp32.out, {n: g["file"] for n, g in bundle["graphs"].items()}),
        on_run=lambda graph, inputs, _: (
            seen.append(inputs["question_ids"].shape) if graph == "vision" else None
        ),
    )
    scene = Image.new("RGB", (64, 64), "white")
    model.generate_captions([scene])
    model.answer_questions([scene], ["what color is the circle ?"])
    assert seen == [(1, 0), (1, len(model.question_words("what color is the circle ?")))]
    words_in = len(model.question_words("is there a star ?"))
    assert model.vision_inputs(scene, "is there a star ?", slots=36)["question_mask"].sum() == words_in
    with pytest.raises(ValueError, match=f"{words_in} question words cannot take 2 slots"):
        model.vision_inputs(scene, "is there a star ?", slots=2)


def test_int2_bundle_runs_our_2_bit_codes(
    onnx_int2: BuiltBundle, onnx_int4: BuiltBundle, onnx_fp32: BuiltBundle
) -> None:
    _assert_parity(onnx_int2)
    nbits = [n for n in _ops(onnx_int2, "decoder_step") if n.op_type == "MatMulNBits"]
    widths = [next(a.i for a in n.attribute if a.name == "bits") for n in nbits]
    # 4 layers x (self-attention q, kv, out; cross-attention q, out; fc1, fc2) at 2 bits (the
    # cross-attention kv projection runs once per image, in cross_kv)
    assert widths.count(2) == 28 and all(n.domain == "com.microsoft" for n in nbits)
    assert any(n.op_type == "DequantizeLinear" for n in _ops(onnx_int2, "vision"))  # int8 conv stem
    # the shipped INT2's zero points are free: floats, one per block of 16 like the scales
    # (MatMulNBits takes float zero points only in the activations' type). Stored as float32 they
    # made the bundle 0.26x the fp32 one; as the float16 numbers they are (onnx_half.py), 0.20x
    # (5.45 MiB), and the smallest ONNX bundle
    size = sum(f["bytes"] for f in onnx_int2.manifest["files"])
    assert size < 0.25 * sum(f["bytes"] for f in onnx_fp32.manifest["files"])
    assert size < sum(f["bytes"] for f in onnx_int4.manifest["files"])
    # each block's scale and zero point reach MatMulNBits from a Cast of a float16 initializer
    proto = onnx.load(str(onnx_int2.out / "decoder_step.onnx"))
    half = {i.name for i in proto.graph.initializer if i.data_type == TensorProto.FLOAT16}
    cast_of = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Cast"}
    for node in (n for n in proto.graph.node if n.op_type == "MatMulNBits"):
        assert cast_of[node.input[2]] in half and cast_of[node.input[3]] in half
    # the fp32 bundle's trained weights are not float16 numbers: nothing of it moves
    fp32 = onnx.load(str(onnx_fp32.out / "decoder_step.onnx"))
    assert not [i for i in fp32.graph.initializer if i.data_type == TensorProto.FLOAT16]


@pytest.mark.parametrize("name", ["onnx_int4", "onnx_int8"])
def test_int4_and_int8_bundles_match_pytorch(name: str, request: pytest.FixtureRequest) -> None:
    bundle: BuiltBundle = request.getfixturevalue(name)
    _assert_parity(bundle)
    bits = 4 if name == "onnx_int4" else 8
    widths = {
        next(a.i for a in n.attribute if a.name == "bits")
        for n in _ops(bundle, "decoder_step")
        if n.op_type == "MatMulNBits"
    }
    assert bits in widths


def test_onnxruntime_genai_runs_the_bundles_decoder(onnx_int2: BuiltBundle) -> None:
    """genai's own greedy loop over genai/decoder.onnx (type "decoder", the image's cross-attention
    keys/values as extra inputs) answers exactly as the bundle's decoder_step and as PyTorch."""
    genai = onnx_int2.manifest["validation"]["onnxruntime_genai"]
    assert genai["executed"] is True and genai["identical_tokens"] == genai["answers"] == 16
    og = pytest.importorskip("onnxruntime_genai")
    config = json.loads((onnx_int2.out / "genai" / "genai_config.json").read_text())
    assert config["model"]["type"] == "decoder"
    bundle = load_bundle(onnx_int2.out)
    app = BundleModel(bundle, onnx_format.WRITER.open(onnx_int2.out, bundle.description))  # type: ignore[arg-type]
    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    example = load_eval_split("vqa", 3)[2]
    cross = app.runner.run("cross_kv", {"image_tokens": app.image_tokens(example.image, example.question)})
    generated = og.Model(str(onnx_int2.out / "genai"))
    generator = og.Generator(generated, og.GeneratorParams(generated))
    generator.set_model_input("cross_k", cross["cross_k"])
    generator.set_model_input("cross_v", cross["cross_v"])
    generator.append_tokens(np.array(app.prompt("vqa", example.question), dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    answer = app.tokenizer.decode(list(generator.get_sequence(0))[len(app.prompt("vqa", example.question)) :])
    assert answer == model.answer_question(example.image, example.question) == example.answer
