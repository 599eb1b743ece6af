"""The export bundle's description files: ``tokenizer.json``, ``bundle.json``, ``manifest.json``.

``bundle.json`` is written for a mobile engineer who will not read our Python: every graph's
file with its inputs and outputs (names, dtypes, shapes), the KV-cache layout and its fixed
length, the special token ids, each task's prompt and which graphs it runs, the image
preprocessing, and the greedy-decode loop in words. ``export/decode.py`` drives the graphs from
this file alone, and the export's validation runs through it, so the description is proven
sufficient by every export. ``manifest.json`` is DESIGN.md's export manifest.

Example::

    write_json(out / TOKENIZER_FILE, tokenizer_json(model.tokenizer))
    write_json(out / BUNDLE_FILE, describe_bundle(model, graphs, files, platform="android", ...))
    write_json(out / MANIFEST_FILE, manifest(out, ...))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mobile_multimodal.export.decode import BUNDLE_VERSION
from mobile_multimodal.export.graphs import PREFILL, GraphSpec, layer_names
from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.manifest_signing import maybe_sign
from mobile_multimodal.model.constraints import TaskConstraints
from mobile_multimodal.model.ctc_lm import LM_KIND, READER_PARAMS
from mobile_multimodal.model.domain import (
    BLANK_MAX_SHARE,
    BLANK_SIDE,
    BLANK_TOLERANCE,
    CAPTION_TOKENS,
    SCORED_TOKENS,
    DomainCheck,
)
from mobile_multimodal.model.llm import MobileMultiModalLLM
from mobile_multimodal.model.tokenizer import _SPLIT, SPECIALS, TASK_TOKENS, Tokenizer

BUNDLE_FILE = "bundle.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
# what PyTorch's API generates at most per task (MobileMultiModalLLM's defaults)
MAX_NEW_TOKENS = {"captioning": 32, "vqa": 8}

DECODE_LOOP = [
    "Greedy decoding of captioning and vqa, batch 1, driven by the graphs below:",
    "1. Preprocess the image as image_preprocessing.scene says. For vqa, split the question into "
    "word ids with tokenizer.json (lower-case, split_regex, unknown words -> <unk>); a question of "
    "more than question.max_len ids is refused (the service answers 422 PROMPT_TOO_LONG); "
    "right-pad the ids with <pad> to question.max_len and build question_mask (1 = real word, "
    "0 = padding). For captioning, question_ids = <pad> everywhere and question_mask = 0. Where "
    "graphs.vision.question_axes names the inputs' question axis, 'vision' takes any number of "
    "slots from 0 to question.max_len: pad to the question's own length (a batch: to its "
    "longest; a caption: 0 slots), which gives the same image_tokens for less work.",
    "2. Run 'vision' -> image_tokens, then 'cross_kv'(image_tokens) -> cross_k, cross_v (once per image).",
    "3. The prompt is tasks.<task>.prompt with the question's word ids in place of "
    "'{question}'. Allocate the self-attention cache: for every decoder layer i, self_k_i and "
    "self_v_i, zeros of kv_cache.layer_shape; split cross_k/cross_v along their first axis into "
    "cross_k_i/cross_v_i (layer i's (1, heads, image_tokens, head_dim)).",
    "4. Feed the prompt one token at a time: for i, t in enumerate(prompt): run 'decoder_step' with "
    "token=[[t]], position=[i], every layer's self_k_i/self_v_i and cross_k_i/cross_v_i; it returns "
    "logits and new_k/new_v (layers, 1, heads, 1, head_dim): write new_k[l, 0, :, 0, :] into "
    "self_k_l[0, :, i, :] and new_v likewise into self_v_l, for every layer l, before the next "
    "step. The logits of the last prompt token score the first answer token. Where graphs has "
    "'prefill' (kv_cache.prefill), it replaces every step but the last prompt token's: run it once "
    "with tokens = the prompt without its last token (1, P) and cross_k/cross_v as 'cross_kv' "
    "returned them, copy prompt_k[l, 0] into self_k_l[0, :, 0:P, :] (prompt_v likewise) for every "
    "layer l, then run 'decoder_step' on the last prompt token at position P.",
    "5. Loop: next = argmax(logits) over the ids tasks.<task>.constraint allows after the answer so "
    "far (see constraint_rules; the first maximum on ties); append it to the answer; stop if it "
    "is <eos>, or when the answer holds max_new_tokens + 1 tokens, or when the next position would "
    "reach kv_cache.max_len. Otherwise run 'decoder_step' with token=[[next]] at the next position "
    "and continue.",
    "6. Text: keep the first max_new_tokens answer tokens, stop at <eos>, drop special tokens, and "
    "join the words with single spaces.",
    "OCR: preprocess as image_preprocessing.text_line, run 'ocr' -> log_probs (1, frames, classes); "
    "take the argmax class of every frame, collapse runs of the same class, drop the blank (class "
    "0); class c >= 1 is tokenizer.ctc.charset[c - 1]; strip surrounding spaces.",
    "OCR where tasks.ocr.decode is 'ctc_prefix_beam_lm': read the line with the beam search "
    "tasks.ocr.language_model describes (OCR_LM_SEARCH) instead of the argmax; the greedy reading "
    "above stays a valid, cheaper fallback (fewer words read right).",
    "Retrieval: image embedding = 'image_embed'(image_tokens of 'vision' without a question); text "
    "embedding = 'text_embed'(ids, mask) with the text's word ids right-padded to text.max_len (an "
    "empty text is the single word <unk>). Both are L2-normalised: similarity is their dot product.",
]


# tasks.ocr.language_model's "search": what model/ctc_lm.py does, for an app to do the same
OCR_LM_SEARCH = [
    "The file (gzip, then JSON) holds order N, alphabet (the charset) and counts: every n-gram of "
    "1..N characters seen in the training text, to how often. A line is padded on the left with "
    "N - 1 START characters (U+0002) and ends with END (U+0003), which n-grams contain.",
    "P(c | prefix), c a character of the alphabet or END: the context is the last N - 1 characters "
    "of START * (N - 1) + prefix. p = 1 / (len(alphabet) + 1); then for n = 1..N: h = the last "
    "n - 1 characters of the context ('' for n = 1); T = the sum of the counts of the n-grams that "
    "start with h and are n long, F = how many such n-grams there are; if T = 0 stop; else "
    "p = (count(h + c) + F * p) / (T + F) (interpolated Witten-Bell).",
    "Search over a line's log_probs (log-softmax of the 'ocr' output, per frame; class 0 is the "
    "blank): keep prefixes with two probabilities, P_blank (frame paths ending in a blank) and "
    "P_char (ending in the prefix's last character), starting from '' with P_blank = 1; each "
    "prefix also has lm_score, the sum over its characters of alpha * log P(c | before) + beta.",
    "Per frame: the characters tried are the classes c >= 1 whose log-probability is above prune, "
    "at most per_frame of them, the likeliest first; if none, every prefix's P_blank becomes "
    "(P_blank + P_char) * P(blank) and P_char 0. Otherwise for every kept prefix: it stays with "
    "P_blank += (P_blank + P_char) * P(blank); for each tried character ch: if ch is the prefix's "
    "last character, the prefix stays with P_char += P_char_old * P(ch) and prefix + ch gets "
    "P_char += P_blank_old * P(ch); else prefix + ch gets P_char += (P_blank_old + P_char_old) * "
    "P(ch). Then keep the width prefixes with the highest log(P_blank + P_char) + lm_score.",
    "After the last frame, the line is the prefix with the highest log(P_blank + P_char) + "
    "lm_score + alpha * log P(END | prefix), with surrounding spaces stripped.",
]


def domain_check_section(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """bundle.json's ``domain_check``: the model's calibrated out-of-domain thresholds and how an
    app computes what it compares with them (model/domain.py); None for a model without them."""
    check = DomainCheck.from_manifest(manifest)  # the same reading of the entry serving makes
    if check.threshold is None:
        return None
    return {
        "threshold": check.threshold,
        "agreement_threshold": check.agreement_threshold,
        "caption_tokens": CAPTION_TOKENS,
        "scored_tokens": SCORED_TOKENS,
        "how": [
            "Optional: say when an image is not a scene of shapes or printed text the model knows (a "
            "photograph, an empty image), so its caption or answer is a guess, not a reading.",
            f"Caption the image greedily (decode_loop) with max_new_tokens = {CAPTION_TOKENS}; score = "
            f"exp(mean of the log-probabilities of its first {SCORED_TOKENS} answer tokens, <eos> "
            "included when reached; unconstrained softmax, as confidences).",
            "agreement = dot(image embedding, text embedding of that caption's text) (retrieval's graphs).",
            "The image is out of domain when score < threshold, or agreement < agreement_threshold "
            "(skip the agreement when agreement_threshold is null), or when it is blank.",
            f"blank: shrink the image (box filter) to at most {BLANK_SIDE} px on its long side; it is "
            f"blank when at most {BLANK_MAX_SHARE:.2%} of its pixels differ by more than "
            f"{BLANK_TOLERANCE} (of 255, in any RGB channel) from its per-channel median colour.",
        ],
        "blank": {"side": BLANK_SIDE, "tolerance": BLANK_TOLERANCE, "max_share": BLANK_MAX_SHARE},
    }


PREFILL_CACHE = (
    "optional graph 'prefill': tokens (batch, P) at positions 0..P-1 (the prompt without its last "
    "token; rows of a batch right-padded with <pad> to the longest) and cross_k/cross_v (layers, "
    "batch, heads, image_tokens, head_dim) -> prompt_k/prompt_v (layers, batch, heads, P, head_dim): "
    "the keys/values decoder_step would have returned for those tokens, for slots 0..P-1 of the "
    "cache; decoding goes on with decoder_step from the prompt's last token at position P"
)


CONSTRAINT_RULES = [
    "tasks.<task>.constraint is an automaton over token ids: start state, accepting states, and for "
    "each state its edges as [token id, next state]. Walk it with the answer's tokens so far from "
    "start; the allowed next ids are those on the edges out of the state reached, plus <eos> when "
    "that state is accepting (or has no edges).",
    "captioning: every caption the training data can hold (its templates, each object in its own "
    "cell in reading order, the count word matching). vqa: exactly the training answers.",
    "The logits are not changed: scores and confidences use the unconstrained softmax.",
]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer, self-contained: vocabulary (index = id), how text splits, the CTC charset."""
    return {
        "kind": "word+ctc-chars",
        "vocab": list(tokenizer.itos),
        "special_tokens": {tok: tokenizer.stoi[tok] for tok in SPECIALS},
        "lowercase": True,
        "split_regex": _SPLIT.pattern,
        "unknown_token": "<unk>",
        "decode": "stop at <eos>, drop special tokens, join words with single spaces",
        "ctc": {"blank": 0, "charset": tokenizer.charset, "class_of_char": "charset.index(c) + 1"},
    }


def _tensor_entry(name: str, t: torch.Tensor) -> dict[str, Any]:
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


def describe_graph(spec: GraphSpec, file: str) -> dict[str, Any]:
    """A graph's file and its inputs and outputs (outputs measured by running the module once)."""
    with torch.no_grad():
        outputs = spec.module(*spec.example_inputs)
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {
        "file": file,
        "inputs": [_tensor_entry(n, t) for n, t in zip(spec.input_names, spec.example_inputs, strict=True)],
        "outputs": [_tensor_entry(n, t) for n, t in zip(spec.output_names, outs, strict=True)],
        "doc": " ".join((type(spec.module).__doc__ or "").strip().split("\n\n")[0].split()),
    }


_TEXT_LINE_RESIZE = {
    "squeeze": "bilinear (PIL) to `height` px high keeping the aspect ratio; width capped at "
    "`width` (a longer line is squeezed)",
    "letterbox": "bilinear (PIL) to `height` px high keeping the aspect ratio; a line then wider "
    "than `width` is instead scaled to `width` px wide keeping the aspect ratio (never squeezed)",
}


def _preprocessing(model: MobileMultiModalLLM) -> dict[str, Any]:
    cfg = model.config
    common = {
        "color": "RGB (RGBA is composited over white first; grey is replicated)",
        "layout": "NCHW float32, batch 1",
        "normalization": "x = pixel / 127.5 - 1 (pixel in 0..255), i.e. mean 0.5 and std 0.5 on 0..1",
        "scale": 1 / 127.5,
        "offset": -1.0,
    }
    return {
        "scene": {
            **common,
            "height": cfg.scene_size,
            "width": cfg.scene_size,
            "resize": "bilinear (PIL) to height x width, aspect ratio not kept",
        },
        "text_line": {
            **common,
            "height": cfg.ocr_height,
            "width": cfg.ocr_width,
            "fit": cfg.ocr_fit,
            "resize": _TEXT_LINE_RESIZE[cfg.ocr_fit],
            "pad": "on the right to `width` (and, letterboxed, above and below to `height`, the line "
            "centred: top offset (height - resized height) // 2), with the per-channel median of the "
            "resized image's border pixels (first row, last row, first column, last column)",
        },
    }


def describe_bundle(
    model: MobileMultiModalLLM,
    graphs: list[GraphSpec],
    files: dict[str, str],
    *,
    platform: str,
    fmt: str,
    runtime: str,
    quantization: str,
    weights: dict[str, Any] | None = None,
    ocr_lm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """bundle.json: everything an app needs to drive the graphs (see DECODE_LOOP). ``ocr_lm``:
    the model manifest's ``ocr_decoding`` section when the model ships its OCR reader's language
    model (copied into the bundle as its ``language_model`` file); OCR then decodes with it."""
    cfg, tok = model.config, model.tokenizer
    by_name = {g.name: g for g in graphs}
    step = by_name["decoder_step"]
    layers = len(step.example_inputs[2:]) // 4  # token, position, then 4 tensors per layer
    layer_cache = step.example_inputs[2]  # self_k_0: (1, nh, S, hs)
    layer_cross = step.example_inputs[2 + 2 * layers]  # cross_k_0: (1, nh, N, hs)
    fused = "question_ids" in by_name["vision"].input_names
    rules = TaskConstraints.from_tokenizer(tok).to_json()
    decode_graphs = ["vision", "cross_kv", *([PREFILL] if PREFILL in by_name else []), "decoder_step"]
    return {
        "bundle_version": BUNDLE_VERSION,
        "model": {
            "name": str(model.manifest.get("name", "mobile-multimodal-llm")),
            "version": str(model.manifest.get("version", "0.1.0")),
            "quantization": quantization,
        },
        "platform": platform,
        "format": fmt,
        "runtime": runtime,
        "graphs": {g.name: describe_graph(g, files[g.name]) for g in graphs},
        "tokenizer": TOKENIZER_FILE,
        "special_tokens": {tok_name: tok.stoi[tok_name] for tok_name in SPECIALS},
        "image_preprocessing": _preprocessing(model),
        "question": {
            "fused_into_vision": fused,
            "max_len": by_name["vision"].example_inputs[1].shape[1] if fused else 0,
            "pad_id": tok.pad_id,
        },
        "text": {"max_len": by_name["text_embed"].example_inputs[0].shape[1], "pad_id": tok.pad_id},
        "kv_cache": {
            "layout": "one (batch, heads, max_len, head_dim) buffer per decoder layer for keys "
            "(self_k_<i>) and one for values (self_v_<i>); shape stacks them as (layers, batch, heads, "
            "max_len, head_dim)",
            "layers": layers,
            "shape": [layers, *layer_cache.shape],
            "layer_shape": list(layer_cache.shape),
            "max_len": int(layer_cache.shape[2]),
            "dtype": "float32",
            "initial": "zeros",
            "update": "decoder_step attends to slots 0..position-1 of the cache and to the token it is "
            "given, and returns that token's keys/values as new_k/new_v (layers, batch, heads, 1, "
            "head_dim); the app writes new_k[l, b, :, 0, :] into self_k_l[b, :, position, :] (and "
            "new_v into self_v_l) for every layer l and row b before the next step",
            "inputs": {
                "self_k": list(layer_names("self_k", layers)),
                "self_v": list(layer_names("self_v", layers)),
                "cross_k": list(layer_names("cross_k", layers)),
                "cross_v": list(layer_names("cross_v", layers)),
            },
            "cross_shape": [layers, *layer_cross.shape],  # cross_kv's outputs, stacked
            **({"prefill": PREFILL_CACHE} if PREFILL in by_name else {}),
        },
        "tasks": {
            "captioning": {
                "graphs": decode_graphs,
                "prompt": [tok.bos_id, tok.task_id("captioning"), tok.sep_id],
                "prompt_tokens": ["<bos>", TASK_TOKENS["captioning"], "<sep>"],
                "question": False,
                "max_new_tokens": MAX_NEW_TOKENS["captioning"],
                "constraint": rules["captioning"],
            },
            "vqa": {
                "graphs": decode_graphs,
                "prompt": [tok.bos_id, tok.task_id("vqa"), "{question}", tok.sep_id],
                "prompt_tokens": ["<bos>", TASK_TOKENS["vqa"], "{question}", "<sep>"],
                "question": fused,
                "max_new_tokens": MAX_NEW_TOKENS["vqa"],
                "constraint": rules["vqa"],
            },
            "ocr": {
                "graphs": ["ocr"],
                "decode": "ctc_greedy" if ocr_lm is None else ocr_lm["decode"],
                "frames": cfg.ocr_width // 8 * cfg.ocr_subframes,
                **({} if ocr_lm is None else {"language_model": _language_model(ocr_lm)}),
            },
            "retrieval": {"graphs": ["vision", "image_embed", "text_embed"], "similarity": "dot product"},
        },
        **({"domain_check": domain} if (domain := domain_check_section(model.manifest)) else {}),
        "decode_loop": DECODE_LOOP,
        "constraint_rules": CONSTRAINT_RULES,
        "weights": weights or {},
    }


def _language_model(section: dict[str, Any]) -> dict[str, Any]:
    """tasks.ocr.language_model from a model manifest's ``ocr_decoding`` section."""
    return {
        "file": section["language_model"],
        "kind": LM_KIND,
        **{name: section[name] for name in READER_PARAMS},
        "order": section["order"],
        "search": OCR_LM_SEARCH,
    }


def weight_summary(graphs: list[GraphSpec]) -> dict[str, Any]:
    """Which layers carry packed (quantized) weights, by kind and width, over all graphs (a layer
    two graphs share, the vision encoder in 'vision' and 'ocr', is written into both files)."""
    seen: dict[int, tuple[str, int, int, int]] = {}
    for spec in graphs:
        for name, qw in spec.quantized.items():
            kind = type(spec.module.get_submodule(name)).__name__.lower()
            seen[id(qw.packed)] = (kind, qw.bits, qw.group_size, math.prod(qw.shape))
    layers: dict[str, dict[str, Any]] = {}
    for kind, bits, group, count in seen.values():
        entry = layers.setdefault(f"{kind} int{bits}", {"layers": 0, "weights": 0, "group_sizes": []})
        entry["layers"] += 1
        entry["weights"] += count
        entry["group_sizes"] = sorted({*entry["group_sizes"], group})
    return {
        "scheme": "weight-only affine, group-wise along the input: w = (code - zero) * scale",
        "packed_layers": dict(sorted(layers.items())),
        "float": "LayerNorm/BatchNorm parameters, biases and position tables stay float32"
        + ("" if layers else "; this bundle is fp32 throughout"),
    }


def file_entries(out: Path, files: list[Path]) -> list[dict[str, Any]]:
    """Each bundle file (relative path, bytes, sha256), walking into package directories."""
    entries = []
    for f in sorted(files):
        paths = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        for p in paths:
            entries.append(
                {"path": p.relative_to(out).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            )
    return entries


def manifest(
    out: Path,
    files: list[Path],
    *,
    platform: str,
    fmt: str,
    quantization: str,
    duration_s: float,
    validation: dict[str, Any],
) -> dict[str, Any]:
    """DESIGN.md's export manifest over the files already in ``out`` (all but itself), HMAC-signed
    when ``MOBILE_MM_MANIFEST_SIGNING_KEY`` is set (``manifest_signing``)."""
    return maybe_sign(
        {
            "format": fmt,
            "platform": platform,
            "quantization": quantization,
            "duration_s": round(duration_s, 3),
            "files": file_entries(out, files),
            "validation": validation,
        }
    )
