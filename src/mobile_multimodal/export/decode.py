"""Drive an exported bundle from its ``bundle.json`` and ``tokenizer.json`` alone.

This is what an app does on the phone, written in Python: preprocess, run the graphs through a
``GraphRunner`` (ONNX Runtime, ExecuTorch, ...), greedy-decode with the fixed-size KV cache,
read text lines as ``tasks.ocr.decode`` says (greedy CTC, or the beam search with the bundle's
character language model), detokenize (``step_caches.ArraySteps`` is the decoder loop's
contract: per-layer cache buffers in, the new token's keys/values out, written into the
buffers by the app; a runner may keep them in its own bound buffers instead,
``BundleModel.decoder_steps``).
It imports nothing of the model package on purpose, but for ``model/ctc_lm.py``, the OCR beam
search (numpy; an algorithm, not the model), which it builds from the bundle's own language-model
file and every setting bundle.json gives: if the description files were missing something,
validation (which runs through here) would fail.
``BundleModel`` offers the methods the eval report calls on a PyTorch model, so the same
metrics score both.

Example::

    bundle = load_bundle(Path("bundle"))
    model = BundleModel(bundle, WRITER.open(Path("bundle"), bundle.description))
    model.generate_captions([image])       # ['a small red circle at the top left']
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobile_multimodal.export.decode_rules import TaskRules
from mobile_multimodal.export.formats import GraphRunner
from mobile_multimodal.export.step_caches import ArraySteps, DecoderSteps, PromptCache
from mobile_multimodal.model.ctc_lm import DECODE as LM_DECODE
from mobile_multimodal.model.ctc_lm import LmReader, reader_from_file

# The decode contract this reader follows (bundle.json "bundle_version"; bundle.py writes it):
# 2: decoder_step takes one cache buffer per layer and returns only the new token's keys/values
# (a version-2 bundle may also carry the optional PREFILL graph; readers without it step the prompt)
BUNDLE_VERSION = 2
PREFILL = "prefill"  # graphs.PREFILL: this reader imports nothing of the model package

RunHook = Callable[[str, dict[str, np.ndarray], dict[str, np.ndarray]], None]


@dataclass
class Bundle:
    directory: Path
    description: dict[str, Any]  # bundle.json
    tokenizer: dict[str, Any]  # tokenizer.json


class BundleVersionError(ValueError):
    """A bundle written for another decode contract than this reader's (``BUNDLE_VERSION``)."""


def check_bundle_version(description: dict[str, Any], directory: Path) -> None:
    """Refuse a bundle of another version than this reader's: its graphs take other inputs."""
    version = description.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise BundleVersionError(
            f"{directory} is a version-{version} bundle; this release reads version {BUNDLE_VERSION} "
            "(its decoder_step takes one KV-cache buffer per layer and returns only the new "
            "token's keys/values): export it again with this release's `mobile-mm export`"
        )


def load_bundle(directory: Path) -> Bundle:
    """The bundle's description and tokenizer (``check_bundle_version`` first)."""
    description = json.loads((directory / "bundle.json").read_text())
    check_bundle_version(description, directory)
    tokenizer = json.loads((directory / description["tokenizer"]).read_text())
    return Bundle(directory, description, tokenizer)


def described_ocr_reader(bundle: Bundle) -> LmReader | None:
    """The reader ``tasks.ocr`` describes: None for ``ctc_greedy`` (and bundles from before the
    field), for ``ctc_prefix_beam_lm`` the beam search over the bundle's language-model file
    with the settings given there. ValueError for anything else."""
    ocr = bundle.description["tasks"]["ocr"]
    decode = ocr.get("decode", "ctc_greedy")
    if decode == "ctc_greedy":
        return None
    if decode != LM_DECODE:
        raise ValueError(f"{bundle.directory}: unknown OCR decoding {decode!r}")
    spec = ocr["language_model"]
    try:
        return reader_from_file(bundle.directory / spec["file"], spec, bundle.tokenizer["ctc"]["charset"])
    except ValueError as exc:
        raise ValueError(f"{bundle.directory}: {exc}") from exc


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis in float64 (what the OCR beam search and the confidence read)."""
    rows = scores.astype(np.float64)
    top = rows.max(-1, keepdims=True)
    return rows - top - np.log(np.exp(rows - top).sum(-1, keepdims=True))


class BundleTokenizer:
    """tokenizer.json: word ids for prompts and questions, text from ids, CTC decoding."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.vocab: list[str] = list(spec["vocab"])
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.specials = set(spec["special_tokens"])
        self.unk = self.ids[spec["unknown_token"]]
        self.eos = spec["special_tokens"]["<eos>"]
        self.split = re.compile(spec["split_regex"])
        self.lowercase = bool(spec["lowercase"])
        self.charset: str = spec["ctc"]["charset"]
        self.blank = int(spec["ctc"]["blank"])

    def encode(self, text: str) -> list[int]:
        words = self.split.findall(text.lower() if self.lowercase else text)
        return [self.ids.get(w, self.unk) for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        words = []
        for i in ids:
            if i == self.eos:
                break
            word = self.vocab[i] if 0 <= i < len(self.vocab) else "<unk>"
            if word not in self.specials:
                words.append(word)
        return " ".join(words)

    def decode_ctc(self, classes: Sequence[int]) -> str:
        chars, prev = [], self.blank
        for c in classes:
            if c != prev and c != self.blank:
                chars.append(self.charset[c - 1])
            prev = c
        return "".join(chars).strip()


# ---- preprocessing (bundle.json "image_preprocessing") -------------------------------------------
def _rgb(image: Image.Image | np.ndarray) -> Image.Image:
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _to_input(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) * np.float32(spec["scale"]) + np.float32(spec["offset"])
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])  # (1, 3, H, W)


def scene_input(image: Image.Image | np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    img = _rgb(image)
    size = (spec["width"], spec["height"])
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return _to_input(img, spec)


def text_line_input(image: Image.Image | np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    img = _rgb(image)
    height, width = spec["height"], spec["width"]
    scaled = max(1, round(img.width * height / max(1, img.height)))
    if spec.get("fit", "squeeze") == "letterbox" and scaled > width:  # bundles before "fit": squeeze
        letterboxed = (width, min(height, max(1, round(img.height * width / max(1, img.width)))))
        img = img.resize(letterboxed, Image.Resampling.BILINEAR)
    else:
        img = img.resize((min(scaled, width), height), Image.Resampling.BILINEAR)
    if img.size != (width, height):
        arr = np.asarray(img)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        fill = tuple(int(c) for c in np.median(border, axis=0))
        canvas = Image.new("RGB", (width, height), fill)
        canvas.paste(img, (0, (height - img.height) // 2))
        img = canvas
    return _to_input(img, spec)


def _padded(ids: list[int], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids = ids[:length]
    out = np.full((1, length), pad, dtype=np.int64)
    mask = np.zeros((1, length), dtype=np.int64)
    out[0, : len(ids)] = ids
    mask[0, : len(ids)] = 1
    return out, mask


class BundleModel:
    """The four tasks of an exported bundle, through a GraphRunner (batch 1 per call)."""

    def __init__(self, bundle: Bundle, runner: GraphRunner, on_run: RunHook | None = None) -> None:
        self.bundle = bundle
        self.spec = bundle.description
        self.runner = runner
        self.on_run = on_run
        self.tokenizer = BundleTokenizer(bundle.tokenizer)
        self.quantization = self.spec["model"]["quantization"]
        self.manifest = {"name": self.spec["model"]["name"]}
        self._pre = self.spec["image_preprocessing"]
        self.rules = TaskRules(self.spec, self.tokenizer.eos)  # each task's decoding constraint
        # as tasks.ocr.decode says; None reads greedily (a caller may choose that)
        self.ocr_reader: LmReader | None = described_ocr_reader(bundle)

    def size_bytes(self) -> int:
        return sum(
            (self.bundle.directory / g["file"]).stat().st_size
            for g in self.spec["graphs"].values()
            if (self.bundle.directory / g["file"]).is_file()
        )

    def run_graph(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph through the runner (and the ``on_run`` hook, when there is one)."""
        outputs = self.runner.run(graph, inputs)
        if self.on_run is not None:
            self.on_run(graph, inputs, outputs)
        return outputs

    def decoder_steps(self, cross: dict[str, np.ndarray], prompt: PromptCache | None = None) -> DecoderSteps:
        """The decoder steps of one answer (its cache's first slots from ``prompt``, 'prefill''s
        output, when given). A runner that keeps the cache in its own buffers offers
        ``decoder_steps(cross_k, cross_v, cache_shape, prompt)`` (ONNX Runtime's IO binding in the
        server: the same graph on the same values, without handing the cache back and forth);
        otherwise, and whenever an ``on_run`` hook must see every call's arrays, ``ArraySteps``."""
        shape = self.spec["kv_cache"]["shape"]
        bound = getattr(self.runner, "decoder_steps", None)
        if bound is not None and self.on_run is None:
            steps: DecoderSteps = bound(cross["cross_k"], cross["cross_v"], shape, prompt)
            return steps
        return ArraySteps(self.run_graph, cross, shape, prompt)

    @property
    def has_prefill(self) -> bool:
        """Whether the bundle carries the optional 'prefill' graph (ONNX bundles since it was added)."""
        return PREFILL in self.spec["graphs"]

    def prefilled(self, prompt: Sequence[int]) -> int:
        """How many of ``prompt``'s tokens 'prefill' feeds (all but the last, which goes through
        'decoder_step' for the first answer token's logits); 0 without the graph."""
        return max(0, len(prompt) - 1) if self.has_prefill else 0

    def prefill_tokens(self, prompts: Sequence[Sequence[int]]) -> np.ndarray | None:
        """'prefill''s ``tokens`` (B, P) for these prompts: each prompt's tokens but its last,
        right-padded with <pad> to the longest; None when nothing is prefilled (no graph, or
        one-token prompts)."""
        longest = max((self.prefilled(p) for p in prompts), default=0)
        if longest == 0:
            return None
        tokens = np.full((len(prompts), longest), int(self.spec["special_tokens"]["<pad>"]), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            fed = self.prefilled(prompt)
            tokens[row, :fed] = prompt[:fed]
        return tokens

    def prompt_cache(self, cross: dict[str, np.ndarray], tokens: np.ndarray | None) -> PromptCache | None:
        """'prefill' over ``tokens`` (``prefill_tokens``) for the rows of ``cross`` (cross_kv's
        outputs): prompt_k / prompt_v (L, B, nh, P, hs); None for no tokens."""
        if tokens is None:
            return None
        inputs = {"tokens": tokens, "cross_k": cross["cross_k"], "cross_v": cross["cross_v"]}
        out = self.run_graph(PREFILL, inputs)
        return out["prompt_k"], out["prompt_v"]

    def question_words(self, question: str | None) -> list[int]:
        """The word ids 'vision' fuses for ``question`` (none without one, or when the bundle does
        not fuse questions); ValueError past question.max_len."""
        q = self.spec["question"]
        if not q["fused_into_vision"] or not question:
            return []
        words = self.tokenizer.encode(question)
        if len(words) > q["max_len"]:
            raise ValueError(f"a question may have at most {q['max_len']} words, this one has {len(words)}")
        return words

    def question_slots(self, lengths: Sequence[int]) -> int:
        """How many question slots a 'vision' call over questions of these word counts passes:
        the longest where the graph takes any length (graphs.vision.question_axes: a caption
        passes none), else question.max_len, the fixed shape."""
        if self.spec["graphs"]["vision"].get("question_axes"):
            return max(lengths, default=0)
        return int(self.spec["question"]["max_len"])

    def vision_inputs(
        self, image: Image.Image | np.ndarray, question: str | None, slots: int | None = None
    ) -> dict[str, np.ndarray]:
        """The 'vision' graph's inputs for one image (and its question, when the bundle fuses it),
        the question padded to ``slots`` (default: ``question_slots`` of this question alone; a
        batch passes its own, so that its rows stack)."""
        inputs = {"image": scene_input(image, self._pre["scene"])}
        q = self.spec["question"]
        if q["fused_into_vision"]:
            words = self.question_words(question)
            slots = self.question_slots([len(words)]) if slots is None else slots
            if not len(words) <= slots <= q["max_len"]:
                raise ValueError(f"{len(words)} question words cannot take {slots} slots")
            inputs["question_ids"], inputs["question_mask"] = _padded(words, slots, q["pad_id"])
        return inputs

    def image_tokens(self, image: Image.Image | np.ndarray, question: str | None) -> np.ndarray:
        return self.run_graph("vision", self.vision_inputs(image, question))["image_tokens"]

    def greedy(
        self,
        image_tokens: np.ndarray,
        prompt: list[int],
        max_new_tokens: int,
        stop: Callable[[], bool] | None = None,
        log_probs: list[float] | None = None,
        constrained: bool = True,
    ) -> list[int]:
        """Token ids of the greedy answer to ``prompt`` (<eos> included when reached).

        A server's hooks, which leave the answer as it is: ``stop()`` is read before every answer
        token (true: the answer ends with the tokens it has: its request gave up), and
        ``log_probs`` (a list) receives each answer token's log-probability, for confidence.
        ``constrained=False`` takes the plain argmax, ignoring the task's constraint (to compare
        the graphs with a loop that has none, e.g. onnxruntime-genai's)."""
        cross = self.run_graph("cross_kv", {"image_tokens": image_tokens})
        rule = self.rules.for_prompt(prompt if constrained else [])
        cache = self.spec["kv_cache"]
        # the cache stays inside: see decoder_steps; 'prefill' (when the bundle has it) fills the
        # prompt's first slots in one call, and the steps feed the rest
        step = self.decoder_steps(cross, self.prompt_cache(cross, self.prefill_tokens([prompt]))).step
        for position in range(self.prefilled(prompt), len(prompt)):
            logits = step(prompt[position], position)
        answer: list[int] = []
        state = rule.start  # the constraint's state after the answer so far
        position = len(prompt)
        budget = min(max_new_tokens + 1, cache["max_len"] - len(prompt))
        while True:
            if stop is not None and stop():
                return answer
            nxt = rule.pick_in(logits[0], state)
            if log_probs is not None:
                row = logits[0].astype(np.float64)
                top = row.max()
                log_probs.append(float(row[nxt] - top - np.log(np.exp(row - top).sum())))
            answer.append(nxt)
            state = rule.next_state(state, nxt)
            if nxt == self.tokenizer.eos or len(answer) >= budget:
                return answer
            logits = step(nxt, position)
            position += 1

    def prompt(self, task: str, question: str = "") -> list[int]:
        prompt: list[int] = []
        for item in self.spec["tasks"][task]["prompt"]:
            prompt.extend(self.tokenizer.encode(question) if item == "{question}" else [int(item)])
        return prompt

    def _generate(self, task: str, image: Image.Image | np.ndarray, question: str = "") -> str:
        limit = int(self.spec["tasks"][task]["max_new_tokens"])
        tokens = self.image_tokens(image, question if self.spec["tasks"][task]["question"] else None)
        return self.tokenizer.decode(self.greedy(tokens, self.prompt(task, question), limit)[:limit])

    # ---- the methods the eval report calls ---------------------------------------------------------
    def generate_captions(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        return [self._generate("captioning", image) for image in images]

    def answer_questions(
        self, images: Sequence[Image.Image | np.ndarray], questions: Sequence[str]
    ) -> list[str]:
        return [self._generate("vqa", i, q) for i, q in zip(images, questions, strict=True)]

    def line_input(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The 'ocr' graph's ``line_image`` (1, 3, H, W) for a text-line image."""
        return text_line_input(image, self._pre["text_line"])

    def text_inputs(self, text: str) -> dict[str, np.ndarray]:
        """The 'text_embed' graph's inputs (1, T) for a retrieval text (truncated at T)."""
        words = self.tokenizer.encode(text) or [self.tokenizer.unk]
        ids, mask = _padded(words, self.spec["text"]["max_len"], self.spec["text"]["pad_id"])
        return {"ids": ids, "mask": mask}

    def extract_texts(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        out = []
        for image in images:
            log_probs = self.run_graph("ocr", {"line_image": self.line_input(image)})["log_probs"][0]
            if self.ocr_reader is None:
                out.append(self.tokenizer.decode_ctc(log_probs.argmax(-1).tolist()))
            else:
                out.append(self.ocr_reader.read(log_softmax(log_probs), self.tokenizer.charset))
        return out

    def get_image_embeddings(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        rows = [
            self.run_graph("image_embed", {"image_tokens": self.image_tokens(image, None)})["embedding"]
            for image in images
        ]
        return np.concatenate(rows)

    def get_text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([self.run_graph("text_embed", self.text_inputs(t))["embedding"] for t in texts])
