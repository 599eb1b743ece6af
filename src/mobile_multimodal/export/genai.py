"""The ONNX bundle's decoder for onnxruntime-genai, the generation library mobile apps use with ORT.

onnxruntime-genai runs a ``genai_config.json`` model type's own loop (prefill, KV cache, greedy
search). Its vision-language types (phi3v, qwen2_5_vl, gemma3, ...) feed image embeddings into a
decoder-only LM's input embeddings; its encoder–decoder types are Whisper (audio) and Marian
(text). Our decoder instead cross-attends to the image tokens, so it fits none of those. It does
fit the generic ``"decoder"`` type: genai passes every model input it does not manage itself as
a user-supplied extra input on every step (``Generator.set_model_input``), so the decoder takes
the image's cross-attention keys/values (``cross_k``/``cross_v``, from ``vision`` + ``cross_kv``,
run once per image in plain ONNX Runtime) as such inputs, and genai does the rest.

genai wants its own cache convention: per-layer ``past_key_values.%d.key`` inputs that grow by
the new tokens (``present.%d.key`` outputs), and a prompt fed in one call. So this decoder is a
second graph (``genai/decoder.onnx``, dynamic sequence and past lengths), not ``decoder_step``;
same weights, same packed MatMulNBits layers. Validation checks that genai's greedy tokens are
the step graph's.

Example::

    import onnxruntime_genai as og
    model = og.Model("bundle/genai")
    gen = og.Generator(model, og.GeneratorParams(model))
    gen.set_model_input("cross_k", cross_k); gen.set_model_input("cross_v", cross_v)
    gen.append_tokens(prompt)
    while not gen.is_done(): gen.generate_next_token()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.export.decode import BundleModel
from mobile_multimodal.export.formats import package_version
from mobile_multimodal.export.graphs import GraphSpec, split_heads
from mobile_multimodal.model.decoder import TextDecoder
from mobile_multimodal.model.llm import MobileMultiModalLLM

GENAI_DIR = "genai"
CONFIG = "genai_config.json"
DECODER = "decoder.onnx"


class GenaiDecoderGraph(nn.Module):
    """input_ids (B, S), attention_mask (B, P + S), cross_k / cross_v (L, B, nh, N, hs) and the
    per-layer past keys/values (B, nh, P, hs) -> logits (B, S, V) and the presents (B, nh, P + S, hs).
    Token i sits at position P + i (no left padding: batch 1, as on a phone)."""

    def __init__(self, decoder: TextDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, cross_k: Tensor, cross_v: Tensor, *past: Tensor
    ) -> tuple[Tensor, ...]:
        dec = self.decoder
        p, s = past[0].shape[2], input_ids.shape[1]
        positions = torch.arange(s) + p
        keys = torch.arange(p + s)
        mask = (keys[None, :] <= positions[:, None])[None, None] & (attention_mask[:, None, None, :] != 0)
        x = dec.tok(input_ids) + dec.pos(positions)[None]
        presents: list[Tensor] = []
        for i, blk in enumerate(dec.layers()):
            attn = blk.self_attn
            h = blk.norm1(x)
            q = split_heads(attn.q(h), attn.heads)
            k, v = attn.project_kv(h)
            k_all, v_all = torch.cat([past[2 * i], k], 2), torch.cat([past[2 * i + 1], v], 2)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
            x = x + attn.out(y.transpose(1, 2).reshape(x.shape[0], s, -1))
            x = x + blk.cross_attn(blk.norm2(x), cache=(cross_k[i], cross_v[i]))[0]
            x = x + blk.mlp(blk.norm3(x))
            presents += [k_all, v_all]
        return (dec.logits(x), *presents)


def genai_spec(model: MobileMultiModalLLM, graphs: list[GraphSpec]) -> GraphSpec:
    """The genai decoder over the step graph's (float-twin) decoder, its packed layers kept."""
    step = next(g for g in graphs if g.name == "decoder_step")
    decoder = step.module.decoder
    assert isinstance(decoder, TextDecoder)
    cfg = model.config
    layers, heads, hd = cfg.decoder_layers, cfg.heads, cfg.head_dim
    # cross_kv's stacked output (L, 1, nh, N, hs); decoder_step takes it split per layer
    cross = torch.stack(step.example_inputs[2 + 2 * layers : 2 + 3 * layers])
    past = [torch.zeros(1, heads, 0, hd) for _ in range(2 * layers)]
    names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return GraphSpec(
        "genai_decoder",
        GenaiDecoderGraph(decoder).eval(),
        (
            torch.tensor([model.tokenizer.prompt("captioning")]),
            torch.ones(1, 3, dtype=torch.long),
            cross,
            cross,
            *past,
        ),
        ("input_ids", "attention_mask", "cross_k", "cross_v", *names),
        ("logits", *(n.replace("past_key_values", "present") for n in names)),
        quantized=dict(step.quantized),  # the same submodule names: 'decoder.blocks.0.self_attn.q', ...
    )


def genai_config(model: MobileMultiModalLLM) -> dict[str, Any]:
    cfg, tok = model.config, model.tokenizer
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": tok.bos_id,
            "eos_token_id": [tok.eos_id],
            "pad_token_id": tok.pad_id,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.max_text_len,
            "decoder": {
                "filename": DECODER,
                "session_options": {"log_id": "mobile-multimodal-llm", "provider_options": []},
                "head_size": cfg.head_dim,
                "hidden_size": cfg.dim,
                "num_attention_heads": cfg.heads,
                "num_key_value_heads": cfg.heads,
                "num_hidden_layers": cfg.decoder_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "top_k": 1,
            "min_length": 0,
            "max_length": cfg.max_text_len,
            "past_present_share_buffer": False,
        },
    }


def write_genai(
    model: MobileMultiModalLLM, graphs: list[GraphSpec], quantization: str, out: Path
) -> list[Path]:
    from mobile_multimodal.export.onnx import export_onnx

    directory = out / GENAI_DIR
    directory.mkdir()
    spec = genai_spec(model, graphs)
    dynamic = {"input_ids": {1: "sequence"}, "attention_mask": {1: "total"}, "logits": {1: "sequence"}}
    dynamic.update({n: {2: "past"} for n in spec.input_names[4:]})
    dynamic.update({n: {2: "total"} for n in spec.output_names[1:]})
    export_onnx(spec, directory / DECODER, quantization, dynamic_axes=dynamic)
    (directory / CONFIG).write_text(json.dumps(genai_config(model), indent=2) + "\n")
    return [directory / DECODER, directory / CONFIG]


def describe_genai(out: Path) -> dict[str, Any]:
    return {
        "onnxruntime_genai": {
            "model_dir": GENAI_DIR,
            "type": "decoder",
            "extra_inputs": ["cross_k", "cross_v"],
            "how": "og.Model(<bundle>/genai); run 'vision' and 'cross_kv' in ONNX Runtime; per answer: "
            "Generator.set_model_input('cross_k'/'cross_v', ...), append_tokens(prompt), "
            "generate_next_token() until is_done() or max_new_tokens + 1 tokens",
        }
    }


class GenaiDecoder:
    """A bundle's genai model, loaded once; greedy answers through onnxruntime-genai's loop."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))

    def tokens(self, cross_k: np.ndarray, cross_v: np.ndarray, prompt: list[int], limit: int) -> list[int]:
        """At most ``limit`` greedy tokens after ``prompt`` (ending at <eos> when genai stops)."""
        generator = self.og.Generator(self.model, self.og.GeneratorParams(self.model))
        generator.set_model_input("cross_k", cross_k)
        generator.set_model_input("cross_v", cross_v)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        tokens: list[int] = []
        while not generator.is_done() and len(tokens) < limit:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens


def validate_genai(exported: BundleModel, examples: int) -> dict[str, Any]:
    """onnxruntime-genai's greedy tokens vs the step graph's, on the first held-out captioning and
    VQA examples. ``executed`` is false (with the reason) when the package is not installed."""
    version = package_version("onnxruntime-genai")
    if version is None:
        return {
            "executed": False,
            "reason": "onnxruntime-genai is not installed: pip install onnxruntime-genai",
        }
    decoder = GenaiDecoder(exported.bundle.directory / GENAI_DIR)
    cases = [(e.image, "captioning", "") for e in load_eval_split("captioning", examples)]
    cases += [(e.image, "vqa", e.question) for e in load_eval_split("vqa", examples)]
    identical = 0
    for image, task, question in cases:
        limit = int(exported.spec["tasks"][task]["max_new_tokens"]) + 1
        tokens = exported.image_tokens(image, question or None)
        cross = exported.runner.run("cross_kv", {"image_tokens": tokens})
        prompt = exported.prompt(task, question)
        # genai's loop has no task constraint (decode_rules.py): it checks the graph, not the rule
        want = exported.greedy(tokens, prompt, limit - 1, constrained=False)
        got = decoder.tokens(cross["cross_k"], cross["cross_v"], prompt, limit)
        identical += got == want
    return {"executed": True, "version": version, "answers": len(cases), "identical_tokens": identical}
