"""The character language model an OCR reader is decoded with (``model.ctc_lm``), fitted on
training text only.

The text is what the reader trains on: the dictionary's training words (``text_images.train_words``,
as the generator's OCR lines draw them) and user-style lines (``text_styles.sample_styled_text``:
words in every case, phrases with punctuation, prices, times, labels, random strings), and
everyday lines (``everyday_text``: 12-hour times, salutations, addresses, numbered places,
prices, dates; a third as many; text only, the reader never trained on them). The held-out
words every evaluation split reads, the user-style split's included, are never in it. For a
reader whose charset has no capitals the text is lower-cased first, and characters outside the
charset are dropped, as training's targets drop them (``Tokenizer.encode_chars``).

``alpha`` and ``beta`` were chosen on user-style lines outside the evaluated ones (indices
5000-5149 of ``user_ocr`` and ``user_ocr_mixed``; the split reads 0-299), with the 128-px
model of issue 18, over alpha 0-1 and beta 0-2: with beta 2, alpha 1.0 read 0.967 of the
lowercase lines and 0.593 of the mixed-case ones, alpha 0.3 0.947 and 0.733, so 0.3. Orders
4-7 and a beam of 24 moved both within noise (200 lines each, indices 5000-5199).

The everyday lines came later (session 22, the same tuning lines, the bundled model): without
them the reader missed the conventions its glyphs leave open ("10:25 PN", "Hello. Ann!"), 0.767
of the mixed-case tuning lines; with 10,000, 20,000, 30,000 or 60,000 of them 0.887, 0.887,
0.893 and 0.900 (alpha 0.3, beta 2; lowercase 0.947 throughout), within noise of each other
(150 lines). From 30,000 on they began to overrule the INT2 reader on other text ("OPEN 24/7"
read "OPEN 247", "3 items" "3 iters": ``tests/model/test_ocr_charset.py``), so a third as many
as the styled lines.

Example::

    reader = build_ocr_reader(model.tokenizer)
    model.ocr_reader = reader          # model.extract_texts now decodes with it
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mobile_multimodal import __version__
from mobile_multimodal.data.everyday_text import sample_everyday_text
from mobile_multimodal.data.text_images import train_words
from mobile_multimodal.data.text_styles import sample_styled_text
from mobile_multimodal.model import checkpoint
from mobile_multimodal.model.ctc_lm import (
    LM_FILE,
    MANIFEST_KEY,
    CharNgramLM,
    LmReader,
    lm_file_bytes,
    read_lm_file,
    shipped_section,
)
from mobile_multimodal.model.tokenizer import Tokenizer

ORDER = 5
STYLED_LINES = 60_000
# everyday_text's lines per styled line (20,000 with the default): the share chosen on the tuning
# lines (module docstring)
EVERYDAY_PER_STYLED = 1 / 3
SEED = 0
ALPHA, BETA = 0.3, 2.0
OCR_DECODINGS = ("auto", "greedy", "lm")  # MOBILE_MM_OCR_DECODING, `mobile-mm eval --ocr-decoding`
# n-grams of orders 4-5 seen once are dropped: half the counts (0.67 MB gzipped for a lowercase
# charset, 1.5 MB for printable ASCII) for reading within noise of the full model (issue 18,
# session 17: bundled model's lowercase user OCR 0.913 against 0.92, generator OCR 0.98 both)
PRUNE_MIN_COUNT, PRUNE_FROM_ORDER = 2, 4


def everyday_lines(styled_lines: int) -> int:
    """How many everyday lines go with ``styled_lines`` styled ones."""
    return round(EVERYDAY_PER_STYLED * styled_lines)


def training_texts(
    tokenizer: Tokenizer,
    styled_lines: int = STYLED_LINES,
    seed: int = SEED,
) -> list[str]:
    """The training words, ``styled_lines`` user-style training lines and ``everyday_lines`` of
    them everyday lines (``everyday_text``), in the reader's charset."""
    words = train_words()
    rng = np.random.default_rng(seed)
    texts = [*words, *(sample_styled_text(rng, words) for _ in range(styled_lines))]
    everyday = np.random.default_rng([seed, 1])  # its own stream: the styled lines stay as they were
    texts += [sample_everyday_text(everyday, words) for _ in range(everyday_lines(styled_lines))]
    charset = set(tokenizer.charset)
    out = []
    for text in texts:
        kept = "".join(c for c in (text.lower() if tokenizer.folds_case else text) if c in charset)
        kept = " ".join(kept.split())  # a dropped character must not leave a double space
        if kept:
            out.append(kept)
    return out


def build_ocr_reader(
    tokenizer: Tokenizer,
    order: int = ORDER,
    styled_lines: int = STYLED_LINES,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> LmReader:
    """An ``LmReader`` whose language model is fitted on ``training_texts`` and pruned
    (``PRUNE_MIN_COUNT``, ``PRUNE_FROM_ORDER``); deterministic."""
    lm = CharNgramLM.fit(training_texts(tokenizer, styled_lines), order=order, alphabet=tokenizer.charset)
    return LmReader(lm.pruned(PRUNE_MIN_COUNT, PRUNE_FROM_ORDER), alpha=alpha, beta=beta)


def _recipe(order: int = ORDER, styled_lines: int = STYLED_LINES) -> dict[str, Any]:
    return {
        "order": order,
        "lines": styled_lines,
        "everyday_lines": everyday_lines(styled_lines),
        "seed": SEED,
        "prune": {"min_count": PRUNE_MIN_COUNT, "from_order": PRUNE_FROM_ORDER},
        "version": __version__,
    }


def recipe_key(tokenizer: Tokenizer, order: int = ORDER, styled_lines: int = STYLED_LINES) -> str:
    """What the fitted counts depend on: the charset, the recipe, and the package's version (its
    generators draw the text). The cache file's name: a changed generator released under the
    same version keeps the old file (delete ``<data_dir>/ocr_lm`` then)."""
    recipe = _recipe(order, styled_lines)
    recipe["charset"] = tokenizer.charset
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached_ocr_reader(
    tokenizer: Tokenizer,
    cache_dir: Path,
    log: Callable[[str], None] = print,
    styled_lines: int = STYLED_LINES,
) -> LmReader:
    """``build_ocr_reader``'s reader, its counts read from ``cache_dir`` when an earlier start
    fitted them (about a second instead of 6-9 s) and written there otherwise. A cache file
    that cannot be read is fitted again and replaced; one that cannot be written is logged."""
    path = cache_dir / f"{recipe_key(tokenizer, styled_lines=styled_lines)}.json.gz"
    if path.exists():
        try:
            return LmReader(read_lm_file(path), alpha=ALPHA, beta=BETA)
        except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as exc:
            log(f"the cached OCR language model {path} is unreadable ({exc}): fitting it again")
    reader = build_ocr_reader(tokenizer, styled_lines=styled_lines)
    try:
        _write_atomically(path, lm_file_bytes(reader.lm))
    except OSError as exc:  # a read-only or full disk costs the next start a fit, not this one its model
        log(f"could not cache the OCR language model in {cache_dir} ({exc}): the next start fits it again")
    return reader


def _write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or not at all: a concurrent start reads the one or the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide a shipped model from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- shipped with the weights ------------------------------------------------------------------
def describe_reader(reader: LmReader) -> dict[str, Any]:
    """The manifest's ``ocr_decoding`` section for a reader this recipe fitted."""
    return shipped_section(reader, _recipe(reader.lm.order))


def ship_ocr_lm(directory: Path, reader: LmReader | None = None) -> dict[str, Any]:
    """Write the OCR reader's language model into the model directory ``directory`` (fitted
    for its tokenizer unless ``reader`` is given: a quantized variant ships its parent's) and
    list it in the manifest, hashed like the weights and described under ``MANIFEST_KEY``.
    Returns the manifest written (signed when a signing key is configured)."""
    manifest = checkpoint.read_manifest(directory)
    tokenizer = Tokenizer.from_dict(manifest["tokenizer"])
    reader = reader if reader is not None else build_ocr_reader(tokenizer)
    if reader.lm.alphabet != tokenizer.charset:
        raise ValueError(f"the language model's alphabet is not the charset of the model in {directory}")
    _write_atomically(directory / LM_FILE, lm_file_bytes(reader.lm))
    files = [f for f in manifest["files"] if f["path"] != LM_FILE]
    manifest = {
        **manifest,
        "files": [*files, checkpoint.file_entry(directory, LM_FILE)],
        MANIFEST_KEY: describe_reader(reader),
    }
    return checkpoint.write_manifest(directory, manifest)
