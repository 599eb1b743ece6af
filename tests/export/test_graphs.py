"""The export graphs compute what the PyTorch model computes: the fixed-size-cache decoder step
greedy-decodes the same tokens as the model's own cached decode, on held-out examples, with the
prompt fed token by token or through the optional prefill graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.export.bundle import describe_bundle, tokenizer_json
from mobile_multimodal.export.decode import Bundle, BundleModel
from mobile_multimodal.export.graphs import (
    GRAPH_NAMES,
    PREFILL,
    TorchGraphRunner,
    build_graphs,
    float_network,
)
from mobile_multimodal.export.running_decode import DecodeRequest, RunningDecode
from mobile_multimodal.export.step_caches import ArrayBatchSteps, LayerCaches, prefix_order
from mobile_multimodal.model.ctc_lm import MANIFEST_KEY, LmReader, shipped_reader
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.quantized_layers import PackedWeight

N = 12  # held-out examples per task


@pytest.fixture(scope="module", params=["fp32", "int2"])
def model(request: pytest.FixtureRequest) -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_pretrained("default", quantization=request.param)


def _torch_bundle(model: MobileMultiModalLLM, prefill: bool = False) -> BundleModel:
    graphs = build_graphs(model, prefill=prefill)
    files = {g.name: f"{g.name}.pt" for g in graphs}
    description = describe_bundle(
        model,
        graphs,
        files,
        platform="android",
        fmt="torch",
        runtime="pytorch",
        quantization=model.quantization,
        ocr_lm=model.manifest.get(MANIFEST_KEY),  # the language model the model ships, as export does
    )
    # the bundle's files are the graphs in memory and the model directory's language model
    bundle = Bundle(model.model_dir or Path("."), description, tokenizer_json(model.tokenizer))
    return BundleModel(bundle, TorchGraphRunner(graphs))


def _shipped(model: MobileMultiModalLLM) -> LmReader | None:
    return shipped_reader(model.model_dir, model.manifest, model.tokenizer.charset)


def _reference_tokens(
    model: MobileMultiModalLLM, image: object, prompt: list[int], question: str | None, limit: int
) -> list[int]:
    """The model's own greedy decode (decoder.generate, KV cache grown with torch.cat)."""
    with torch.inference_mode():
        q = model.encode_texts([question], allow_empty=True) if question is not None else (None, None)
        tokens, _ = model.network.encode_images(model._scenes([image]), *q)  # type: ignore[list-item]
        out = model.network.decoder.generate(
            [prompt], tokens, limit + 1, model.tokenizer.eos_id, model.tokenizer.pad_id
        )
    return out[0]


@pytest.mark.parametrize("prefill", [False, True])
def test_step_graph_decodes_the_models_tokens(model: MobileMultiModalLLM, prefill: bool) -> None:
    exported = _torch_bundle(model, prefill)
    assert exported.has_prefill == prefill
    tok = model.tokenizer
    cases = [(e.image, tok.prompt("captioning"), None, 32) for e in load_eval_split("captioning", N)]
    cases += [(e.image, tok.prompt("vqa", e.question), e.question, 8) for e in load_eval_split("vqa", N)]
    for image, prompt, question, limit in cases:
        want = _reference_tokens(model, image, prompt, question, limit)
        image_tokens = exported.image_tokens(image, question)
        assert exported.prompt("vqa" if question else "captioning", question or "") == prompt
        got = exported.greedy(image_tokens, prompt, limit)
        assert got == want, (question, tok.decode(got), tok.decode(want))
        assert got[-1] == tok.eos_id  # the answers end by themselves, not by the budget


def test_every_task_matches_the_python_api(model: MobileMultiModalLLM) -> None:
    exported = _torch_bundle(model)
    lines = [e.image for e in load_eval_split("ocr", N)]
    assert exported.ocr_reader is not None and model.ocr_reader is not None  # both read with the LM
    assert exported.extract_texts(lines) == model.extract_texts(lines)
    exported.ocr_reader = model.ocr_reader = None  # and both greedily
    try:
        assert exported.extract_texts(lines) == model.extract_texts(lines)
    finally:
        model.ocr_reader = _shipped(model)
    scenes = load_eval_split("retrieval", N)
    images = [e.image for e in scenes]
    np.testing.assert_allclose(
        exported.get_image_embeddings(images), model.get_image_embeddings(images), atol=1e-5
    )
    texts = [e.text for e in scenes] + ["", " ".join(["a red circle"] * 15)]  # empty; 45 words
    np.testing.assert_allclose(
        exported.get_text_embeddings(texts), model.get_text_embeddings(texts), atol=1e-5
    )
    captions = exported.generate_captions(images[:4])
    assert captions == model.generate_captions(images[:4])
    assert all(captions)


def test_cache_slots_from_the_position_on_are_ignored(model: MobileMultiModalLLM) -> None:
    """decoder_step attends to the cache's slots before ``position`` and to its own token: what
    the other slots hold changes nothing, a slot before it does, and only the new token's
    keys/values come out (the app writes them into slot ``position``)."""
    step = {g.name: g for g in build_graphs(model)}["decoder_step"]
    layers = model.config.decoder_layers
    token, position = step.example_inputs[0], torch.tensor([5])
    caches = [torch.randn_like(t) for t in step.example_inputs[2:]]
    garbage = [c.clone() for c in caches]
    for cache in garbage[: 2 * layers]:  # every self_k_i / self_v_i from slot 5 on
        cache[:, :, 5:] = torch.randn_like(cache[:, :, 5:]) * 100
    changed = [c.clone() for c in caches]
    changed[layers][:, :, 4] += 1  # self_v_0, slot 4: a token before this one
    with torch.no_grad():
        logits, k, v = step.module(token, position, *caches)
        logits2, k2, v2 = step.module(token, position, *garbage)
        logits3, _, _ = step.module(token, position, *changed)
    torch.testing.assert_close(logits, logits2)
    torch.testing.assert_close((k, v), (k2, v2))
    assert k.shape == v.shape == (layers, 1, model.config.heads, 1, model.config.head_dim)
    assert not torch.allclose(logits, logits3)


def _prompts(model: MobileMultiModalLLM) -> list[list[int]]:
    """Prompts of different lengths: a caption's (3 tokens) and three questions'."""
    questions = ["what color is the circle ?", "is there a small red square ?", "how many shapes are there ?"]
    return [model.tokenizer.prompt("captioning")] + [model.tokenizer.prompt("vqa", q) for q in questions]


def test_prefill_writes_what_the_steps_write(model: MobileMultiModalLLM) -> None:
    """'prefill' over a batch of prompts right-padded to the longest gives every row's first
    slots what ``decoder_step`` writes there fed the same tokens one by one (the same for a row
    alone: its padding changes nothing), and nothing for the padding the steps read."""
    graphs = {g.name: g for g in build_graphs(model, prefill=True)}
    runner = TorchGraphRunner(list(graphs.values()))
    exported = _torch_bundle(model, prefill=True)
    scenes = [e.image for e in load_eval_split("captioning", 4)]
    image_tokens = np.concatenate([exported.image_tokens(image, None) for image in scenes])
    cross = runner.run("cross_kv", {"image_tokens": image_tokens})
    prompts = _prompts(model)
    tokens = exported.prefill_tokens(prompts)
    assert tokens is not None and tokens.shape == (4, max(len(p) for p in prompts) - 1)
    prompt_k, prompt_v = exported.prompt_cache(cross, tokens) or (None, None)
    assert prompt_k is not None and prompt_v is not None
    layers, heads, hd = model.config.decoder_layers, model.config.heads, model.config.head_dim
    assert prompt_k.shape == prompt_v.shape == (layers, 4, heads, tokens.shape[1], hd)
    shape = [layers, 1, heads, model.config.max_text_len, hd]
    for row, prompt in enumerate(prompts):
        one = slice(row, row + 1)
        steps = ArrayBatchSteps(runner.run, cross["cross_k"][:, one], cross["cross_v"][:, one], shape)
        for position, token in enumerate(prompt[:-1]):
            steps.step([token], position)
        k, v = steps.cache
        fed = len(prompt) - 1
        np.testing.assert_allclose(prompt_k[:, row, :, :fed], k[:, 0, :, :fed], atol=1e-5)
        np.testing.assert_allclose(prompt_v[:, row, :, :fed], v[:, 0, :, :fed], atol=1e-5)
        alone = exported.prompt_cache(
            {"cross_k": cross["cross_k"][:, one], "cross_v": cross["cross_v"][:, one]}, tokens[one, :fed]
        )
        assert alone is not None
        np.testing.assert_allclose(alone[0][:, 0], prompt_k[:, row, :, :fed], atol=1e-5)
    assert exported.prefill_tokens([[1]]) is None  # a one-token prompt: nothing to prefill


def test_rows_prefilled_together_answer_as_rows_stepped_alone(model: MobileMultiModalLLM) -> None:
    """``RunningDecode`` with 'prefill': rows of different prompt lengths start at their own last
    prompt position, and rows that join later are prefilled as they join; each row's tokens and
    log-probabilities are what the bundle without 'prefill' decodes for it alone."""
    with_prefill, stepped = _torch_bundle(model, prefill=True), _torch_bundle(model)
    scenes = [e.image for e in load_eval_split("captioning", 4)]
    prompts = _prompts(model)
    image_tokens = [with_prefill.image_tokens(image, None) for image in scenes]
    running = RunningDecode(with_prefill)
    running.add(
        np.concatenate(image_tokens[:2]), [DecodeRequest(p, 12, tag=i) for i, p in enumerate(prompts[:2])]
    )
    answers = {a.tag: a for a in running.step()}
    running.add(
        np.concatenate(image_tokens[2:]), [DecodeRequest(p, 12, tag=i + 2) for i, p in enumerate(prompts[2:])]
    )
    while len(running):
        answers.update({a.tag: a for a in running.step()})
    for i, prompt in enumerate(prompts):
        log_probs: list[float] = []
        assert answers[i].ids == stepped.greedy(image_tokens[i], prompt, 12, log_probs=log_probs), i
        assert answers[i].log_probs == pytest.approx(log_probs, abs=1e-4)


def test_graphs_are_static_and_named(model: MobileMultiModalLLM) -> None:
    graphs = build_graphs(model, max_cache_len=20)
    assert tuple(g.name for g in graphs) == GRAPH_NAMES
    step = graphs[GRAPH_NAMES.index("decoder_step")]
    layers = model.config.decoder_layers
    assert len(step.example_inputs) == 2 + 4 * layers  # token, position, then one tensor per layer
    assert step.input_names[2:4] == ("self_k_0", "self_k_1")
    assert step.example_inputs[2].shape == (1, model.config.heads, 20, model.config.head_dim)
    with pytest.raises(ValueError, match="max_cache_len"):
        build_graphs(model, max_cache_len=model.config.max_text_len + 1)
    with_prefill = build_graphs(model, max_cache_len=20, prefill=True)
    assert tuple(g.name for g in with_prefill) == (*GRAPH_NAMES, PREFILL)
    assert with_prefill[-1].length_axes == {"tokens": 1, "prompt_k": 3, "prompt_v": 3}
    assert with_prefill[-1].length_name == "prompt"


def test_float_network_stands_for_the_packed_one(model: MobileMultiModalLLM) -> None:
    net, quantized = float_network(model.network)
    packed = [m for m in model.network.modules() if isinstance(m, PackedWeight)]
    assert len(set(map(id, packed))) == len(quantized)
    assert not any(isinstance(m, PackedWeight) for m in net.modules())
    assert any(isinstance(m, PackedWeight) for m in model.network.modules()) == (model.quantization != "fp32")
    lines = torch.stack([torch.zeros(3, 32, 256)])
    with torch.no_grad():
        torch.testing.assert_close(net.read_text(lines), model.network.read_text(lines), atol=1e-5, rtol=0)


def test_rows_leave_the_caches_with_only_the_rows_past_the_survivors_moved() -> None:
    """``LayerCaches.keep`` in ``prefix_order``: every kept row keeps its own cache and image
    keys/values, the buffers stay C-ordered views of the batch's first rows (bound in place by
    ONNX Runtime) and only the rows past the survivors are copied; any other order still works."""
    rng = np.random.default_rng(0)
    rows, shape = 7, (2, 7, 5, 48, 32)
    cross = rng.standard_normal((2, rows, 5, 64, 32), dtype=np.float32)
    caches = LayerCaches(cross, cross * 2, shape)
    for a in (*caches.k, *caches.v):
        a[:] = rng.standard_normal(a.shape)
    before = [[a.copy() for a in arrays] for arrays in (caches.k, caches.v, caches.cross_k, caches.cross_v)]
    buffers = [a.ctypes.data for a in caches.k]
    kept = [0, 1, 4, 5, 6]  # rows 2 and 3 leave
    order = prefix_order(kept)
    assert order == [0, 1, 5, 6, 4] and sorted(order) == kept
    caches.keep(order)
    for old, new in zip(before, (caches.k, caches.v, caches.cross_k, caches.cross_v), strict=True):
        for o, n in zip(old, new, strict=True):
            assert n.flags["C_CONTIGUOUS"] and n.shape[0] == len(order)
            np.testing.assert_array_equal(n, o[order])
    assert [a.ctypes.data for a in caches.k] == buffers  # compacted in place, not reallocated
    caches.keep([2, 0])  # not a prefix order: copied into fresh buffers, the same rows
    np.testing.assert_array_equal(caches.k[1], before[0][1][[order[2], order[0]]])
    assert caches.k[1].flags["C_CONTIGUOUS"]
    assert prefix_order([]) == [] and prefix_order([3]) == [3] and prefix_order([0, 1]) == [0, 1]


def test_a_step_writes_every_layer_in_place_before_and_after_rows_leave_and_join() -> None:
    """``LayerCaches.write`` puts each row's new keys/values into its slot of every layer's bound
    buffer (one assignment over the stacked layers), at one position for every row or one per
    row, and still does after rows left (the buffers are then views of the first rows) and
    after rows joined; the slots written before stay."""
    rng = np.random.default_rng(1)
    layers, rows = 3, 4
    cross = rng.standard_normal((layers, rows, 5, 64, 32), dtype=np.float32)
    caches = LayerCaches(cross, cross, (layers, rows, 5, 48, 32))
    buffers = [a.ctypes.data for a in (*caches.k, *caches.v)]

    def new(count: int) -> np.ndarray:
        return rng.standard_normal((layers, count, 5, 1, 32), dtype=np.float32)

    first_k, first_v = new(rows), new(rows)
    caches.write(first_k, first_v, 7)
    order = prefix_order([0, 2, 3])  # row 1 leaves: row 3 moves into its place
    caches.keep(order)
    assert [a.ctypes.data for a in (*caches.k, *caches.v)] == buffers
    step_k, step_v, positions = new(3), new(3), [5, 9, 11]
    caches.write(step_k, step_v, positions)
    for layer in range(layers):
        for row, source in enumerate(order):
            for cache, first, step in ((caches.k, first_k, step_k), (caches.v, first_v, step_v)):
                np.testing.assert_array_equal(cache[layer][row, :, 7], first[layer, source, :, 0])
                np.testing.assert_array_equal(cache[layer][row, :, positions[row]], step[layer, row, :, 0])
    caches.join(cross[:, :2], cross[:, :2])  # two rows join, their caches empty
    joined_k, joined_v = new(5), new(5)
    caches.write(joined_k, joined_v, 12)
    for layer in range(layers):
        assert caches.k[layer].shape[0] == 5 and caches.k[layer].flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(caches.k[layer][:, :, 12], joined_k[layer, :, :, 0])
        np.testing.assert_array_equal(caches.v[layer][:, :, 12], joined_v[layer, :, :, 0])
        np.testing.assert_array_equal(caches.k[layer][:3, :, 7], first_k[layer, order, :, 0])
        assert not caches.k[layer][3:, :, :12].any()  # the joined rows' earlier slots: zeros
    stacked_k, _ = caches.stacked()
    np.testing.assert_array_equal(stacked_k, np.stack(caches.k))
