"""MobileMultiModalLLM: the Python API around the network.

Example::

    from mobile_multimodal.model import MobileMultiModalLLM
    m = MobileMultiModalLLM.from_pretrained("default")
    m.generate_caption("scene.png")          # 'a large red circle at the top left'
    m.extract_text(line_image)               # 'hello'
    m.answer_question(img, "what color is the circle ?")
    m.max_question_tokens                    # 36 for max_text_len 48: longer -> PromptTooLongError

Limits: a question may use the decoder's context (``max_text_len`` tokens) except the prompt's
three markers (``<bos> <task> <sep>``) and room for a default-length answer and its ``<eos>``;
a retrieval text, the text encoder's ``max_text_len``. Both are checked by counting tokens
before any tensor is built. ``stop`` (one ``threading.Event``-like signal per image) ends a
row's decoding at its next token (see ``decoder.py``).

Confidence without labels: the batch methods take ``confidences`` (an empty list) and fill it
with one value in [0, 1] per input: for decoded text the geometric mean of the greedy tokens'
probabilities (``exp`` of the mean token log-probability), for OCR the same over the CTC best
path's frames. Without it nothing extra is computed.

Decoding is task-constrained (``constraints.py``): a caption uses only the caption vocabulary and
never names a position twice, a VQA answer is one of the training answers. Set
``constrained_decoding = False`` on an instance to decode freely (the argmax over all words).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobile_multimodal.manifest_signing import FROM_SETTINGS, SigningKey
from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.constraints import TaskConstraints
from mobile_multimodal.model.ctc_lm import (
    LM_FILE,
    LmReader,
    lm_file_bytes,
    ocr_decoding_of,
    shipped_reader,
    shipped_section,
)
from mobile_multimodal.model.ctc_lm import MANIFEST_KEY as LM_MANIFEST_KEY
from mobile_multimodal.model.decoder import Stops
from mobile_multimodal.model.domain import CAPTION_TOKENS, SCORED_TOKENS, DomainCheck, check_images
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.model_errors import ModelLoadError, check_question_tokens
from mobile_multimodal.model.network import MultiModalNet
from mobile_multimodal.model.preprocess import ImageInput, scene_tensor, text_line_tensor
from mobile_multimodal.model.quantized_loading import load_quantized_into
from mobile_multimodal.model.tokenizer import Tokenizer

QUANTIZATIONS = ("fp32", "int8", "int4", "int2")
MODEL_NAME = "mobile-multimodal-llm"
PROMPT_MARKERS = 3  # <bos> <task> ... <sep> around a question (Tokenizer.prompt)
DEFAULT_ANSWER_TOKENS = 8  # answer_question's default budget; a question leaves room for it + <eos>


def bundled_model_dir() -> Path:
    return Path(str(files("mobile_multimodal"))) / "weights" / "default"


def resolve_model_dir(path_or_name: str | Path, quantization: str = "fp32") -> Path:
    """'default' -> the bundled model; a quantized variant lives in <dir>/<quantization>/."""
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(
            f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}",
            code="QUANTIZATION_UNAVAILABLE",
        )
    base = bundled_model_dir() if str(path_or_name) == "default" else Path(path_or_name)
    if not base.exists():
        raise ModelLoadError(f"model directory {base} does not exist", code="MODEL_NOT_FOUND")
    if quantization == "fp32":
        return base
    variant = base / quantization
    if not (variant / checkpoint.MANIFEST).exists():
        raise ModelLoadError(
            f"no {quantization} variant at {variant}; build it with "
            f"`mobile-mm quantize --bits {quantization[3:]} --model {path_or_name} --out {variant}`",
            code="QUANTIZATION_UNAVAILABLE",
        )
    return variant


def _no_stage(name: str) -> AbstractContextManager[Any]:
    return nullcontext()


def _module_bytes(modules: list[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


class MobileMultiModalLLM:
    def __init__(
        self,
        network: MultiModalNet,
        tokenizer: Tokenizer,
        manifest: dict[str, Any] | None = None,
        model_dir: Path | None = None,
        quantization: str = "fp32",
    ) -> None:
        self.network = network.eval()
        self.tokenizer = tokenizer
        self.config = network.cfg
        self.manifest = manifest or {}
        self.model_dir = model_dir
        self.quantization = quantization
        self.constrained_decoding = True
        # None: OCR reads greedily; an LmReader reads with a character language model (the one
        # the model directory ships, attached by from_pretrained; model/ctc_lm.py). Confidences
        # stay the greedy path's either way.
        self.ocr_reader: LmReader | None = None

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: ModelConfig | None = None,
        seed: int = 0,
        tokenizer: Tokenizer | None = None,
        pretrained_stem: bool = False,
    ) -> MobileMultiModalLLM:
        """A model with fresh random weights (for training and tests); with ``pretrained_stem``
        the vision stem starts from ImageNet weights (``stem="efficientnet-lite0"`` only)."""
        tokenizer = tokenizer or Tokenizer.default()
        config = config or ModelConfig.default()
        config.vocab_size = tokenizer.vocab_size
        config.ocr_classes = tokenizer.ctc_classes
        torch.manual_seed(seed)
        network = MultiModalNet(config)
        if pretrained_stem:
            network.encoder.load_pretrained_stem()
        return cls(network, tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | Path = "default",
        quantization: str = "fp32",
        verify: bool = True,
        stages: Callable[[str], AbstractContextManager[Any]] | None = None,
        signing_key: SigningKey = FROM_SETTINGS,
    ) -> MobileMultiModalLLM:
        """Load a saved model. ``stages(name)``, when given, wraps each step of the load (a
        caller's tracing; this module records nothing): "read" (manifest, config, tokenizer),
        "verify" (the manifest's signature when ``signing_key`` (default: the settings' key) is
        set, then every file's size and sha256 against the manifest), "build" (read the weights,
        build the network, load them into it; attach the OCR language model the directory ships,
        so text lines read as a server reads them: set ``ocr_reader = None`` to read greedily)."""
        step = stages or _no_stage
        with step("read"):
            directory = resolve_model_dir(path_or_name, quantization)
            manifest = checkpoint.read_manifest(directory)
            try:
                config = ModelConfig.from_dict(manifest["config"])
                tokenizer = Tokenizer.from_dict(manifest["tokenizer"])
            except (KeyError, TypeError, ValueError) as e:
                raise ModelLoadError(
                    f"invalid config/tokenizer in the manifest: {e}", code="MODEL_MANIFEST_INVALID"
                ) from e
        if verify:
            with step("verify"):
                checkpoint.check_files(directory, manifest, signing_key)
        with step("build"):
            return cls._build(directory, manifest, config, tokenizer)

    @classmethod
    def _build(
        cls, directory: Path, manifest: dict[str, Any], config: ModelConfig, tokenizer: Tokenizer
    ) -> MobileMultiModalLLM:
        network = MultiModalNet(config)
        state = checkpoint.load_state(directory, manifest, verify=False)
        mode = manifest.get("quantization", {}).get("mode", "fp32")
        if mode != "fp32":
            load_quantized_into(network, state, manifest["quantization"])
        else:
            missing, unexpected = network.load_state_dict(state, strict=False)
            # the tied embedding is stored once under either name
            missing = [k for k in missing if not k.endswith("tok.weight")]
            if missing or unexpected:
                raise ModelLoadError(
                    f"weights do not match the architecture: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}",
                    code="MODEL_WEIGHTS_INVALID",
                )
        model = cls(network, tokenizer, manifest, directory, quantization=mode)
        try:  # the directory's OCR language model (verified with the weights), when it ships one
            model.ocr_reader = shipped_reader(directory, manifest, tokenizer.charset)
        except ValueError as e:
            raise ModelLoadError(
                f"the OCR language model of {directory} cannot be used: {e}", code="MODEL_MANIFEST_INVALID"
            ) from e
        return model

    def save(self, directory: str | Path, extra_manifest: dict[str, Any] | None = None) -> Path:
        directory = Path(directory)
        manifest = {
            "name": MODEL_NAME,
            "version": self.manifest.get("version", "0.1.0"),
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "quantization": {"mode": "fp32", "bits": 32},
            **{
                k: v
                for k, v in self.manifest.items()
                # the OCR language model's section describes a file: written below, or not at all
                if k not in ("files", "config", "tokenizer", "format_version", LM_MANIFEST_KEY)
            },
            **(extra_manifest or {}),
        }
        extra_files: tuple[str, ...] = ()
        reader = self.ocr_reader
        if reader is not None and reader.lm.alphabet == self.tokenizer.charset:
            # the model reads text with it: it ships with the weights, as it was loaded
            directory.mkdir(parents=True, exist_ok=True)
            (directory / LM_FILE).write_bytes(lm_file_bytes(reader.lm))
            recipe = (self.manifest.get(LM_MANIFEST_KEY) or {}).get("recipe")
            manifest[LM_MANIFEST_KEY] = shipped_section(reader, recipe)
            extra_files = (LM_FILE,)
        state = {k: v for k, v in self.network.state_dict().items() if not k.endswith(".tok.weight")}
        self.manifest = checkpoint.save_state(directory, state, manifest, extra_files)
        self.model_dir = directory
        return directory

    # ---- device ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the weights are (inputs are moved there; outputs come back as CPU values)."""
        for t in self.network.parameters():
            return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> MobileMultiModalLLM:
        """Move the network to ``device`` ("cpu", "cuda", "cuda:1"); returns self."""
        self.network.to(torch.device(device))
        return self

    # ---- limits ------------------------------------------------------------------------
    @property
    def max_question_tokens(self) -> int:
        """Most tokens a VQA question may have (see the module doc)."""
        return self.config.max_text_len - PROMPT_MARKERS - (DEFAULT_ANSWER_TOKENS + 1)

    @property
    def max_text_tokens(self) -> int:
        """Most tokens a retrieval text may have: the text encoder's positions."""
        return self.config.max_text_len

    def check_question(self, question: str) -> None:
        """Raise PromptTooLongError if ``question`` has more than ``max_question_tokens``."""
        check_question_tokens(self.tokenizer, question, self.max_question_tokens)

    # ---- inference ---------------------------------------------------------------------
    def _scenes(self, images: Sequence[ImageInput]) -> torch.Tensor:
        return torch.stack([scene_tensor(i, self.config.scene_size) for i in images]).to(self.device)

    def _generate(
        self,
        task: str,
        images: Sequence[ImageInput],
        prompts: list[list[int]],
        max_tokens: int,
        questions: Sequence[str] | None = None,
        stop: Stops = None,
        confidences: list[float] | None = None,
        domain: list[float] | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> list[str]:
        """Greedy decoding of one prompt per image; one token beyond the budget lets <eos> end it.
        With questions, the image encoding is conditioned on them (see ``question_fusion``).
        ``domain`` (captions of a budget of at least ``CAPTION_TOKENS``): filled with each image's
        in-domain score from this very decode (``domain.py``), so a caption costs no second decode."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        # the network uses the questions only when it was built with question_fusion
        question: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if questions is not None:
            ids, valid = self.encode_texts(questions, allow_empty=True)
            question = (ids.to(self.device), valid.to(self.device))
        tokens, _ = self.network.encode_images(self._scenes(images), *question)
        scores: list[float] | None = [] if confidences is not None else None
        prefix: list[float] = []
        score_prefix = domain is not None and max_tokens >= CAPTION_TOKENS
        if score_prefix and embeddings is not None:  # the check's image embedding, from these tokens
            embeddings[:] = list(self.network.image_head(tokens).float().cpu().numpy())
        rules = TaskConstraints.from_tokenizer(self.tokenizer) if self.constrained_decoding else None
        out = self.network.decoder.generate(
            prompts,
            tokens,
            max_tokens + 1,
            self.tokenizer.eos_id,
            self.tokenizer.pad_id,
            stop=stop,
            scores=scores,
            allowed=None if rules is None else rules.rows([task] * len(prompts)),
            prefix_scores=(SCORED_TOKENS, prefix) if score_prefix else None,
        )
        if confidences is not None and scores is not None:
            confidences[:] = [math.exp(s) for s in scores]
        if domain is not None and score_prefix:
            domain[:] = [math.exp(s) for s in prefix]
        return [self.tokenizer.decode(o[:max_tokens]) for o in out]

    @torch.inference_mode()
    def generate_captions(
        self,
        images: Sequence[ImageInput],
        max_tokens: int = 32,
        stop: Stops = None,
        confidences: list[float] | None = None,
        domain: list[float] | None = None,
        embeddings: list[np.ndarray] | None = None,
    ) -> list[str]:
        """``domain``: see ``_generate`` (left empty when ``max_tokens`` < ``CAPTION_TOKENS``);
        ``embeddings``, with ``domain``: filled with each image's embedding (``get_image_embeddings``'s)
        from the tokens the caption was decoded from, for the check's caption agreement."""
        prompts = [self.tokenizer.prompt("captioning")] * len(images)
        return self._generate(
            "captioning",
            images,
            prompts,
            max_tokens,
            stop=stop,
            confidences=confidences,
            domain=domain,
            embeddings=embeddings,
        )

    @torch.inference_mode()
    def answer_questions(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        max_tokens: int = DEFAULT_ANSWER_TOKENS,
        stop: Stops = None,
        confidences: list[float] | None = None,
    ) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        for q in questions:  # before any tensor: a 100k-word question is refused after 37 words
            self.check_question(q)
        prompts = [self.tokenizer.prompt("vqa", q) for q in questions]
        return self._generate(
            "vqa", images, prompts, max_tokens, questions, stop=stop, confidences=confidences
        )

    @torch.inference_mode()
    def extract_texts(
        self, images: Sequence[ImageInput], confidences: list[float] | None = None
    ) -> list[str]:
        cfg = self.config
        batch = torch.stack(
            [text_line_tensor(i, cfg.ocr_height, cfg.ocr_width, cfg.ocr_fit) for i in images]
        ).to(self.device)
        logits = self.network.read_text(batch)  # (B, frames, classes)
        log_probs = logits.float().log_softmax(-1)  # (B, frames, classes)
        if confidences is not None:  # the best path's mean log-probability per frame
            best_lp = log_probs.amax(-1).mean(-1)  # (B,)
            confidences[:] = [math.exp(float(v)) for v in best_lp]
        if self.ocr_reader is not None:
            return [self.ocr_reader.read(row, self.tokenizer.charset) for row in log_probs.cpu().numpy()]
        return [self.tokenizer.decode_ctc(row.tolist()) for row in logits.argmax(-1)]

    @torch.inference_mode()
    def get_image_embeddings(self, images: Sequence[ImageInput]) -> np.ndarray:
        return self.network.image_embeddings(self._scenes(images)).cpu().numpy()

    def encode_texts(
        self, texts: Sequence[str], allow_empty: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids (B, T) and validity (B, T), right-padded. An empty text becomes <unk>, unless
        ``allow_empty``, where it stays a row with no valid token."""
        unk = [] if allow_empty else [self.tokenizer.stoi["<unk>"]]
        seqs = [self.tokenizer.encode(t)[: self.config.max_text_len] or unk for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_id, dtype=torch.long)
        valid = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            valid[i, : len(s)] = True
        return ids, valid

    @torch.inference_mode()
    def get_text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            raise ValueError("texts must not be empty")
        ids, valid = self.encode_texts(texts)
        return self.network.text_embeddings(ids.to(self.device), valid.to(self.device)).cpu().numpy()

    def generate_caption(self, image: ImageInput, max_tokens: int = 32) -> str:
        return self.generate_captions([image], max_tokens)[0]

    def answer_question(
        self, image: ImageInput, question: str, max_tokens: int = DEFAULT_ANSWER_TOKENS
    ) -> str:
        return self.answer_questions([image], [question], max_tokens)[0]

    def extract_text(self, image: ImageInput) -> str:
        return self.extract_texts([image])[0]

    def out_of_domain(
        self,
        images: Sequence[ImageInput],
        scores: Sequence[float] | None = None,
        captions: Sequence[str] | None = None,
        embeddings: Sequence[np.ndarray] | None = None,
    ) -> tuple[list[bool | None], list[float], list[float]]:
        """Per scene image: out of domain (None when this model has no calibrated threshold), its
        in-domain score and its caption agreement (``domain.check_images``); ``scores``,
        ``captions`` and ``embeddings`` already measured by a caption decode are used as they are."""
        check = DomainCheck.from_manifest(self.manifest)
        return check_images(self, check, images, scores, captions, embeddings)

    # ---- introspection -----------------------------------------------------------------
    def component_memory_bytes(self) -> dict[str, int]:
        return {name: _module_bytes(mods) for name, mods in self.network.components().items()}

    def size_bytes(self) -> int:
        if self.model_dir is not None and self.manifest.get("files"):  # the weights, not the OCR LM
            return sum(int(f["bytes"]) for f in self.manifest["files"] if f["path"] != LM_FILE)
        return _module_bytes([self.network])

    def parameter_count(self) -> int:
        """Weights of the architecture, whatever their storage: a quantized layer keeps its packed
        weight (and bias) as buffers, which count as the parameters they stand for."""
        total = sum(p.numel() for p in self.network.parameters())
        for module in self.network.modules():
            shape = getattr(module, "weight_shape", None)  # model.quantized_layers.PackedWeight
            if shape is not None:
                total += math.prod(shape)
                bias = getattr(module, "bias", None)
                total += bias.numel() if isinstance(bias, torch.Tensor) else 0
        return total

    def get_model_info(self) -> dict[str, Any]:
        return {
            "name": self.manifest.get("name", MODEL_NAME),
            "version": self.manifest.get("version", "0.1.0"),
            "quantization": self.quantization,
            "runtime": "pytorch",
            "ocr_decoding": ocr_decoding_of(self),
            "parameters": self.parameter_count(),
            "size_bytes": self.size_bytes(),
            "components": self.component_memory_bytes(),
            "tasks": ["captioning", "ocr", "vqa", "retrieval"],
            "data_version": self.manifest.get("data_version"),
            "eval": self.manifest.get("eval"),
            "model_dir": str(self.model_dir) if self.model_dir else None,
        }
