"""The export graphs: the network cut into static-shape pieces that serve all four tasks.

A mobile runtime cannot run our Python decode loop nor a KV cache that grows with
``torch.cat``; it runs a few fixed-shape graphs and the app drives them (``bundle.json`` says
how). The split, batch 1 everywhere:

- ``vision``: scene image (+ the question's word ids and mask when the model fuses questions
  into the encoder, for VQA; all-zero mask for captioning and retrieval, or no slots at all
  where the format leaves the question's length free, ``GraphSpec.length_axes``) -> image tokens;
- ``ocr``: text-line image -> CTC log-probabilities per frame (greedy CTC decode in the app);
- ``cross_kv``: image tokens -> every decoder layer's cross-attention keys/values (once per image);
- ``decoder_step``: one token at one position + a FIXED-SIZE self-attention KV cache, one read-only
  buffer per layer (slots ``< position`` hold the earlier tokens) -> logits and only this token's
  keys/values, which the app writes into slot ``position`` (bundle version 2). Returning the whole
  updated cache (version 1) copied every slot of every layer every step: at a server's batch of
  16, more time than the step's matrix products (ONNX Runtime's profiler);
- ``prefill`` (optional, ``build_graphs(prefill=True)``: formats that take a prompt of any length,
  ONNX): a prompt's tokens but the last in one pass -> their keys/values for cache slots 0..P-1.
  Without it the prompt is fed token by token through ``decoder_step`` (a VQA prompt is ~9
  tokens before a 1-2 word answer);
- ``image_embed`` / ``text_embed``: the retrieval heads (L2-normalised embeddings).

The modules here reuse the model's own submodules (weights and code); only the decoder step is
written anew, because the model's attention appends to its cache. Quantized layers appear as
float layers holding their dequantized weights (what PyTorch computes with), and
``GraphSpec.quantized`` maps each such layer to the packed weight it came from, so a format
writer can store the packed form instead (ONNX MatMulNBits does).

Example::

    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    graphs = {g.name: g for g in build_graphs(model)}
    step = graphs["decoder_step"]
    logits, new_k, new_v = step.module(*step.example_inputs)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.export.xnnpack_ops import MASKED_SCORE
from mobile_multimodal.model.decoder import TextDecoder
from mobile_multimodal.model.heads import CTCReader, ImageProjection, TextEncoder
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.model.quantized_layers import (
    PackedWeight,
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    replace_module,
)
from mobile_multimodal.model.quantized_weight import QuantizedWeight
from mobile_multimodal.model.vision import VisionEncoder

GRAPH_NAMES = ("vision", "ocr", "cross_kv", "decoder_step", "image_embed", "text_embed")
# The graphs whose batch axis a format may leave dynamic: a server encodes a batch's images in one
# vision and one cross_kv call, decodes its answers through one decoder_step call per step, and
# reads a batch's text lines or embeds its retrieval images and texts in one call each; phones run
# batch 1. The modules are batch-generic; only the exported shapes differ. The batch is axis 0 of
# every input and output except the stacked per-layer tensors (L, B, ...).
PREFILL = "prefill"  # the optional graph (module docstring): not in GRAPH_NAMES, not every format has it
BATCHED_GRAPHS = ("vision", "ocr", "cross_kv", "decoder_step", "image_embed", "text_embed", PREFILL)
STACKED_OUTPUTS = ("cross_k", "cross_v", "new_k", "new_v", "prompt_k", "prompt_v")
QUESTION_AXES = {"question_ids": 1, "question_mask": 1}  # (B, Q): see GraphSpec.length_axes
PROMPT_AXES = {"tokens": 1, "prompt_k": 3, "prompt_v": 3}  # prefill's (B, P) and (L, B, nh, P, hs)


def layer_names(prefix: str, layers: int) -> tuple[str, ...]:
    """``prefix_0`` .. ``prefix_{layers-1}``: decoder_step's per-layer inputs."""
    return tuple(f"{prefix}_{i}" for i in range(layers))


def batch_axis(name: str) -> int:
    """Where the batch is in a batched graph's input or output ``name``."""
    return 1 if name in STACKED_OUTPUTS else 0


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: an eval-mode fp32 module with static shapes and its example inputs."""

    name: str
    module: nn.Module
    example_inputs: tuple[Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # input/output name -> its batch axis, for graphs that take any batch (BATCHED_GRAPHS);
    # formats that need fully static shapes ignore it (batch 1)
    batch_axes: Mapping[str, int] = field(default_factory=dict)
    # submodule name inside ``module`` -> the packed weight its float weight was dequantized from
    quantized: Mapping[str, QuantizedWeight] = field(default_factory=dict)
    # input name -> its question-length axis, for a format that takes any length up to the
    # example's (question.max_len): vision encodes the question's slots beside the image tokens, so
    # a caption need not pay for 36 empty ones (a masked slot changes nothing: every query sees the
    # image tokens). Formats that need fully static shapes ignore it, like batch_axes.
    length_axes: Mapping[str, int] = field(default_factory=dict)
    # what the length axes count: "question" (vision's question slots) or "prompt" (prefill's tokens)
    length_name: str = "question"


# ---- the float network -----------------------------------------------------------------------
def _float_twin(packed: PackedWeight) -> nn.Module:
    """The float module that computes what ``packed`` computes (its weight dequantized)."""
    weight = packed.quantized().dequantize()
    new: nn.Module
    if isinstance(packed, QuantLinear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=packed.bias is not None)
    elif isinstance(packed, QuantConv2d):
        new = nn.Conv2d(
            weight.shape[1] * packed.groups,
            weight.shape[0],
            tuple(weight.shape[2:]),  # type: ignore[arg-type]
            stride=packed.stride,  # type: ignore[arg-type]
            padding=packed.padding,  # type: ignore[arg-type]
            dilation=packed.dilation,  # type: ignore[arg-type]
            groups=packed.groups,
            bias=packed.bias is not None,
        )
    elif isinstance(packed, QuantEmbedding):
        new = nn.Embedding(weight.shape[0], weight.shape[1])
    else:
        raise TypeError(f"no float twin for {type(packed).__name__}")
    with torch.no_grad():
        new.weight.copy_(weight)
        if packed.bias is not None:
            new.bias.copy_(packed.bias)  # type: ignore[union-attr, operator]
    return new


def float_network(network: MultiModalNet) -> tuple[MultiModalNet, dict[int, QuantizedWeight]]:
    """A copy of ``network`` with every packed layer replaced by its float twin, and
    id(twin) -> the packed weight it stands for. The original network is left untouched."""
    net = copy.deepcopy(network).eval()
    quantized: dict[int, QuantizedWeight] = {}
    packed = [m for m in net.modules() if isinstance(m, PackedWeight)]
    for module in dict.fromkeys(packed):  # a tied module is listed once
        twin = _float_twin(module)
        replace_module(net, module, twin)
        quantized[id(twin)] = module.quantized()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, quantized


# ---- the graphs --------------------------------------------------------------------------------
class VisionGraph(nn.Module):
    """(1, 3, S, S) scene in [-1, 1] [+ question ids (1, Q) int64 and mask (1, Q) int64, 1 = real
    token] -> image tokens (1, N, D). An all-zero mask is the plain (unfused) encoding."""

    def __init__(self, encoder: VisionEncoder, embeddings: nn.Embedding, fuse_question: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.embeddings = embeddings
        self.fuse_question = fuse_question

    def forward(
        self, image: Tensor, question_ids: Tensor | None = None, question_mask: Tensor | None = None
    ) -> Tensor:
        if not self.fuse_question or question_ids is None or question_mask is None:
            return self.encoder(image)[0]
        question = self.embeddings(question_ids)
        return self.encoder(image, question=question, question_valid=question_mask != 0)[0]


class OcrGraph(nn.Module):
    """(1, 3, 32, 256) text line in [-1, 1] -> CTC log-probabilities (1, frames, classes)."""

    def __init__(self, encoder: VisionEncoder, head: CTCReader) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, line: Tensor) -> Tensor:
        return self.head(self.encoder(line, columns=True)[0])


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, nh, T, hs)


class CrossKVGraph(nn.Module):
    """image tokens (1, N, D) -> cross_k, cross_v (L, 1, nh, N, hs): each decoder layer's
    cross-attention keys and values, computed once per image."""

    def __init__(self, decoder: TextDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_tokens: Tensor) -> tuple[Tensor, Tensor]:
        kv = self.decoder.image_kv(image_tokens)
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


class DecoderStepGraph(nn.Module):
    """One greedy-decode step with a fixed-size self-attention cache, for B answers at once.

    token (B, 1) int64, position (B,) int64 (0-based index of each row's token in its own
    sequence), then per decoder layer i: self_k_i, self_v_i (B, nh, S, hs) float32, the cache,
    slots < position holding the earlier tokens' keys/values (later slots are ignored: a fresh
    cache may hold anything, zeros by convention), then cross_k_i, cross_v_i (B, nh, N, hs)
    -> logits (B, V) for each row's next token, and new_k / new_v (L, B, nh, 1, hs): this token's
    keys/values, which the caller writes into each row's slot ``position`` before the next step.
    Rows are independent: each has its own position, so a row may still be reading its prompt
    while another answers. The mobile bundles use B = 1; the ONNX bundle declares B dynamic
    (``GraphSpec.batch_axes``) for a server's batches."""

    def __init__(
        self, decoder: TextDecoder, cache_len: int, heads: int, head_dim: int, image_tokens: int
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.cache_len = cache_len
        self.n_layers = len(list(decoder.layers()))
        # every size but the batch is a Python int, so the exported graph holds it as a constant:
        # a size read off a tensor (x.shape) becomes Shape -> Gather -> Unsqueeze -> Concat nodes
        # once the batch axis is dynamic, run at every step
        self.heads, self.head_dim, self.image_tokens = heads, head_dim, image_tokens
        self.register_buffer("slots", torch.arange(cache_len), persistent=False)
        self.register_buffer("masked", torch.full((1, heads, 1, cache_len), MASKED_SCORE), persistent=False)

    def forward(self, token: Tensor, position: Tensor, *caches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dec, n = self.decoder, self.n_layers
        nh, hs, slots = self.heads, self.head_dim, self.cache_len
        self_k, self_v, cross_k, cross_v = (caches[i * n : (i + 1) * n] for i in range(4))
        at = position[:, None]  # (B, 1)
        earlier = self.slots[None, :] < at  # type: ignore[index]  # (B, S): the cached tokens
        # the additive mask of the cached slots, once for every layer, as (B * nh, 1, S): each
        # row's heads are consecutive rows of the attention's batched matmuls. Broadcast over the
        # heads by a product with a constant, not an expand (XNNPACK leaves expand to ExecuTorch's
        # portable kernels, which split the step into two delegate graphs)
        later = 1.0 - earlier.to(torch.float32)[:, None, None, :]  # (B, 1, 1, S)
        bias = (later * self.masked).reshape(-1, 1, slots)  # type: ignore[operator]
        d, scale = nh * hs, hs**-0.5
        # the token's state is (B, D) throughout: every Linear then takes a matrix, which runtimes
        # run as one matrix product with its bias (ONNX Gemm) instead of a batched MatMul and an Add
        x = (dec.tok(token) + dec.pos(at)).reshape(-1, d)
        new_k, new_v = [], []
        for i, blk in enumerate(dec.layers()):
            attn = blk.self_attn
            h = blk.norm1(x)
            # one token's (B, D) is its heads' (B * nh, 1, hs) in the same memory (no transpose)
            q = attn.q(h).reshape(-1, 1, hs) * scale
            k, v = (t.reshape(-1, 1, hs) for t in attn.kv(h).split(d, dim=-1))
            y = _attend_cache_and_token(
                q, self_k[i].reshape(-1, slots, hs), self_v[i].reshape(-1, slots, hs), bias, k, v, slots
            )
            x = x + attn.out(y.reshape(-1, d))
            cross = blk.cross_attn
            q = cross.q(blk.norm2(x)).reshape(-1, 1, hs)
            keys = cross_k[i].reshape(-1, self.image_tokens, hs)
            weights = torch.softmax(torch.bmm(q * scale, keys.transpose(1, 2)), dim=-1)
            y = torch.bmm(weights, cross_v[i].reshape(-1, self.image_tokens, hs))
            x = x + cross.out(y.reshape(-1, d))
            x = x + blk.mlp(blk.norm3(x))
            new_k.append(k)
            new_v.append(v)
        # every layer's (B * nh, 1, hs) joined along the first axis is (L, B, nh, 1, hs) in memory
        return (
            dec.logits(x),
            torch.cat(new_k).reshape(n, -1, nh, 1, hs),
            torch.cat(new_v).reshape(n, -1, nh, 1, hs),
        )


def _attend_cache_and_token(
    q: Tensor, cache_k: Tensor, cache_v: Tensor, bias: Tensor, k: Tensor, v: Tensor, slots: int
) -> Tensor:
    """Softmax attention of q (B * nh, 1, hs), already scaled, over the cache's ``slots`` slots
    (B * nh, S, hs), masked by the additive ``bias`` (B * nh, 1, S), and the token's own k/v
    (B * nh, 1, hs): what scaled_dot_product_attention computes over the cache with the token
    written into it, without concatenating or copying the cache (only the scores are joined).
    Written with the ops every runtime delegates: batched matmuls over (B * nh) rows (a 4-D
    matmul becomes an expand that copies the cache in ExecuTorch), an additive mask and one
    softmax (XNNPACK splits its graph around a boolean ``where``; its masked_fill(-inf) gave NaN)."""
    cached = torch.bmm(q, cache_k.transpose(1, 2)) + bias  # (B * nh, 1, S)
    own = torch.bmm(q, k.transpose(1, 2))  # (B * nh, 1, 1)
    to_cache, to_own = torch.softmax(torch.cat([cached, own], dim=-1), dim=-1).split([slots, 1], dim=-1)
    return torch.bmm(to_cache, cache_v) + to_own * v


class PrefillGraph(nn.Module):
    """The keys/values of B prompts' tokens in one pass: what ``decoder_step`` writes into cache
    slots 0..P-1 when fed the tokens one at a time, as the model's own causal attention computes
    them (same weights; equal to the steps' within float rounding, tested).

    tokens (B, P) int64 at positions 0..P-1 (a row shorter than P right-padded with any id: a
    token never attends to a later one, so its real tokens' keys/values do not depend on the
    padding, and the padded slots are overwritten before any step reads them), cross_k, cross_v
    (L, B, nh, N, hs) as ``cross_kv`` returns them -> prompt_k, prompt_v (L, B, nh, P, hs).
    No logits: the app feeds the prompt's last token through ``decoder_step``, whose logits pick
    the first answer token, so one loop picks every answer token with or without this graph."""

    def __init__(self, decoder: TextDecoder, cache_len: int, heads: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.heads = heads
        # the additive causal mask (0 where a key may be seen), sliced to the prompt: one Add in
        # the graph (a boolean mask exports as Where/IsNaN around the softmax, onnx.py)
        causal = torch.ones(cache_len, cache_len, dtype=torch.bool).tril()
        bias = torch.zeros(cache_len, cache_len).masked_fill(~causal, MASKED_SCORE)
        self.register_buffer("causal", bias, persistent=False)

    def forward(self, tokens: Tensor, cross_k: Tensor, cross_v: Tensor) -> tuple[Tensor, Tensor]:
        dec, p = self.decoder, tokens.shape[1]
        x = dec.tok(tokens) + dec.pos(torch.arange(p))[None]
        bias = self.causal[:p, :p]  # type: ignore[index]
        blocks = dec.layers()
        keys, values = [], []
        for i, blk in enumerate(blocks):
            attn = blk.self_attn
            h = blk.norm1(x)
            k, v = attn.project_kv(h)
            keys.append(k)
            values.append(v)
            if i == len(blocks) - 1:
                break  # the last layer's output feeds no key or value
            y = F.scaled_dot_product_attention(split_heads(attn.q(h), self.heads), k, v, attn_mask=bias)
            x = x + attn.out(y.transpose(1, 2).reshape(x.shape))
            x = x + blk.cross_attn(blk.norm2(x), cache=(cross_k[i], cross_v[i]))[0]
            x = x + blk.mlp(blk.norm3(x))
        return torch.stack(keys), torch.stack(values)


class ImageEmbedGraph(nn.Module):
    """image tokens (1, N, D) (vision graph, no question) -> retrieval embedding (1, E)."""

    def __init__(self, head: ImageProjection) -> None:
        super().__init__()
        self.head = head

    def forward(self, image_tokens: Tensor) -> Tensor:
        return self.head(image_tokens)


class TextEmbedGraph(nn.Module):
    """word ids (1, T) int64 and mask (1, T) int64 (1 = real token, right-padded) -> (1, E)."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.encoder(ids, mask != 0)


class TorchGraphRunner:
    """Runs the graphs in PyTorch (eager), as a GraphRunner: the reference a format's runtime is
    compared with, and what the decode loop is tested against without any export."""

    def __init__(self, graphs: list[GraphSpec]) -> None:
        self.graphs = {g.name: g for g in graphs}

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.graphs[graph]
        with torch.no_grad():
            outputs = spec.module(*(torch.from_numpy(inputs[n]) for n in spec.input_names))
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {n: o.numpy() for n, o in zip(spec.output_names, outs, strict=True)}


def _quantized_names(module: nn.Module, quantized: dict[int, QuantizedWeight]) -> dict[str, QuantizedWeight]:
    return {name: quantized[id(m)] for name, m in module.named_modules() if id(m) in quantized}


def build_graphs(
    model: MobileMultiModalLLM, max_cache_len: int | None = None, prefill: bool = False
) -> list[GraphSpec]:
    """The six graphs of ``model`` (see the module docstring), float and eval-mode, batch 1, and
    ``prefill`` after them when asked (a format whose graphs take a prompt of any length).
    ``max_cache_len`` (default and upper bound: the decoder's ``max_text_len``) is the number of
    self-attention cache slots, i.e. the longest prompt + answer the bundle can decode."""
    cfg = model.config
    cache_len = cfg.max_text_len if max_cache_len is None else max_cache_len
    if not 1 <= cache_len <= cfg.max_text_len:
        raise ValueError(
            f"max_cache_len must be in 1..{cfg.max_text_len} (the position table), got {cache_len}"
        )
    net, quantized = float_network(model.network)
    d, heads, layers = cfg.dim, cfg.heads, cfg.decoder_layers
    n_tokens = cfg.scene_grid**2
    q_len = model.max_question_tokens  # longer questions are refused by the model's API too
    scene = torch.zeros(1, 3, cfg.scene_size, cfg.scene_size)
    tokens = torch.zeros(1, n_tokens, d)
    cross = torch.zeros(1, heads, n_tokens, cfg.head_dim)  # one layer's
    cache = torch.zeros(1, heads, cache_len, cfg.head_dim)
    ids = torch.full((1, q_len), model.tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(1, q_len, dtype=torch.long)
    # a retrieval text may be as long as the context (the Python API truncates there)
    text_ids = torch.full((1, cfg.max_text_len), model.tokenizer.pad_id, dtype=torch.long)
    text_mask = torch.zeros(1, cfg.max_text_len, dtype=torch.long)

    vision = VisionGraph(net.encoder, net.embeddings, cfg.question_fusion)
    vision_inputs: tuple[tuple[Tensor, ...], tuple[str, ...]] = (
        ((scene, ids, mask), ("image", "question_ids", "question_mask"))
        if cfg.question_fusion
        else ((scene,), ("image",))
    )
    step_inputs = (
        *layer_names("self_k", layers),
        *layer_names("self_v", layers),
        *layer_names("cross_k", layers),
        *layer_names("cross_v", layers),
    )
    modules: list[tuple[str, nn.Module, tuple[Tensor, ...], tuple[str, ...], tuple[str, ...]]] = [
        ("vision", vision, vision_inputs[0], vision_inputs[1], ("image_tokens",)),
        (
            "ocr",
            OcrGraph(net.encoder, net.ocr_head),
            (torch.zeros(1, 3, cfg.ocr_height, cfg.ocr_width),),
            ("line_image",),
            ("log_probs",),
        ),
        ("cross_kv", CrossKVGraph(net.decoder), (tokens,), ("image_tokens",), ("cross_k", "cross_v")),
        (
            "decoder_step",
            DecoderStepGraph(net.decoder, cache_len, heads, cfg.head_dim, n_tokens),
            (
                torch.tensor([[model.tokenizer.bos_id]]),
                torch.tensor([0]),
                *(cache.clone() for _ in range(2 * layers)),
                *(cross.clone() for _ in range(2 * layers)),
            ),
            ("token", "position", *step_inputs),
            ("logits", "new_k", "new_v"),
        ),
        ("image_embed", ImageEmbedGraph(net.image_head), (tokens,), ("image_tokens",), ("embedding",)),
        (
            "text_embed",
            TextEmbedGraph(net.text_encoder),
            (text_ids, text_mask),
            ("ids", "mask"),
            ("embedding",),
        ),
    ]
    if prefill:
        stacked_cross = torch.zeros(layers, *cross.shape)  # cross_kv's outputs, as they come
        # the example (what bundle.json describes): the longest, every slot but the last token's
        prompt = torch.full((1, max(1, cache_len - 1)), model.tokenizer.pad_id, dtype=torch.long)
        modules.append(
            (
                PREFILL,
                PrefillGraph(net.decoder, cache_len, heads),
                (prompt, stacked_cross, stacked_cross.clone()),
                ("tokens", "cross_k", "cross_v"),
                ("prompt_k", "prompt_v"),
            )
        )
    lengths = {"vision": QUESTION_AXES if cfg.question_fusion else {}, PREFILL: PROMPT_AXES}
    return [
        GraphSpec(
            name,
            module.eval(),
            inputs,
            in_names,
            out_names,
            batch_axes={n: batch_axis(n) for n in (*in_names, *out_names)} if name in BATCHED_GRAPHS else {},
            quantized=_quantized_names(module, quantized),
            length_axes=lengths.get(name, {}),
            length_name="prompt" if name == PREFILL else "question",
        )
        for name, module, inputs, in_names, out_names in modules
    ]
