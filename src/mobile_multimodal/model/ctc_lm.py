"""Reading a text line with a character language model: CTC prefix beam search over the reader's
per-frame log-probabilities, each extension scored by a character n-gram model.

Greedy CTC (``Tokenizer.decode_ctc``) takes the best class of every frame on its own, so a glyph
two characters share in the font drawn ("I" and "l" in many sans-serifs) is a coin toss, and a
doubled narrow letter is easily read once. The beam keeps the ``width`` best prefixes, summing
the probability of every frame path that collapses to the same prefix (blank and repeat rules
as in training), and adds ``alpha`` times the language model's log-probability of each
character plus ``beta`` per character (the bonus offsets the model's per-character cost, which
would otherwise favour dropping letters). The end of the line is scored too.

``CharNgramLM`` is an interpolated Witten-Bell character n-gram model (Witten & Bell 1991; Chen
& Goodman 1998, section 2.5) fitted on training text only: it knows how words are spelt and how
prices and times are written, not the held-out words the evaluation reads.

Example::

    lm = CharNgramLM.fit(["hello world", "Price: 4.20"], order=5)
    reader = LmReader(lm, alpha=0.3, beta=2.0)
    text = reader.read(log_probs, charset)      # log_probs: (frames, 1 + len(charset)), blank 0
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

START, END = "\x02", "\x03"  # outside printable ASCII: no charset holds them
NEG_INF = -math.inf
CACHE_LIMIT = 50_000  # (context, character) probabilities kept: ~10 MB at most
LM_KIND = "char-ngram-witten-bell"  # the file's "kind"
LM_FILE = "ocr_lm.json.gz"  # in a model directory (listed in its manifest) and an export bundle
MANIFEST_KEY = "ocr_decoding"  # a model manifest's description of how OCR reads with LM_FILE
DECODE = "ctc_prefix_beam_lm"  # how a manifest or bundle.json names this decoding
READER_PARAMS = ("alpha", "beta", "width", "prune", "per_frame")  # what a description carries
_LOADED_LIMIT = 4  # fitted models kept by read_lm_file (one per charset a process serves)
_loaded: dict[str, CharNgramLM] = {}


def _logsumexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


class CharNgramLM:
    """P(char | the ``order - 1`` characters before it), interpolated Witten-Bell down to the
    uniform distribution over ``alphabet`` and the end of the line.

    ``counts`` maps every n-gram (1 <= n <= order; the context padded with ``START``) to how
    often it was seen; the totals and the number of distinct followers of each context are
    derived from them, so the counts are the whole model (``to_dict``)."""

    def __init__(self, order: int, alphabet: str, counts: dict[str, int]) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order = order
        self.alphabet = alphabet
        self.counts = counts
        self._totals: Counter[str] = Counter()
        self._followers: Counter[str] = Counter()
        for gram, count in counts.items():
            self._totals[gram[:-1]] += count
            self._followers[gram[:-1]] += 1
        self._uniform = 1.0 / (len(alphabet) + 1)  # every character and the end
        self._cache: dict[tuple[str, str], float] = {}

    @classmethod
    def fit(cls, texts: Iterable[str], order: int = 5, alphabet: str | None = None) -> CharNgramLM:
        """Count every n-gram of ``texts`` (each a line, its end counted as a character). Every
        character must be in ``alphabet`` (default: the characters of ``texts``), else the
        probabilities would not sum to one over it."""
        counts: Counter[str] = Counter()
        seen: set[str] = set()
        pad = START * (order - 1)
        for text in texts:
            seen.update(text)
            line = pad + text + END
            for i in range(order - 1, len(line)):
                for n in range(1, order + 1):
                    counts[line[i - n + 1 : i + 1]] += 1
        alphabet = alphabet if alphabet is not None else "".join(sorted(seen))
        outside = (seen - set(alphabet)) | (seen & {START, END})
        if outside:
            raise ValueError(f"the texts hold characters outside the alphabet: {sorted(outside)}")
        return cls(order, alphabet, dict(counts))

    def context(self, prefix: str) -> str:
        """The characters ``log_prob`` conditions on after ``prefix``."""
        if self.order == 1:
            return ""
        return (START * (self.order - 1) + prefix)[-(self.order - 1) :]

    def log_prob(self, prefix: str, char: str) -> float:
        """log P(``char`` | ``prefix``); ``char`` may be ``END``."""
        ctx = self.context(prefix)
        key = (ctx, char)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        p = self._uniform
        for n in range(1, self.order + 1):  # from the unigram up, each order interpolated with the one below
            history = ctx[len(ctx) - n + 1 :] if n > 1 else ""
            total = self._totals.get(history, 0)
            if total == 0:
                break  # a longer history ending in this unseen one is unseen too
            followers = self._followers[history]
            p = (self.counts.get(history + char, 0) + followers * p) / (total + followers)
        value = math.log(p)
        if len(self._cache) >= CACHE_LIMIT:  # a long-lived server reads any text: bound the memory
            self._cache.clear()
        self._cache[key] = value
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": LM_KIND,
            "order": self.order,
            "alphabet": self.alphabet,
            "counts": self.counts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharNgramLM:
        if d.get("kind") != LM_KIND:
            raise ValueError(f"not a {LM_KIND} model: kind {d.get('kind')!r}")
        return cls(int(d["order"]), str(d["alphabet"]), {str(k): int(v) for k, v in d["counts"].items()})

    def pruned(self, min_count: int = 2, from_order: int = 4) -> CharNgramLM:
        """The model without the n-grams of order ``from_order`` and above seen fewer than
        ``min_count`` times (padding included in the order). Totals and follower counts are
        derived from the counts that remain, so the result is a smoothed model of its own that
        sums to one; it backs off where the long n-grams were dropped."""
        kept = {g: c for g, c in self.counts.items() if len(g) < from_order or c >= min_count}
        return CharNgramLM(self.order, self.alphabet, kept)


@dataclass
class _Beam:
    blank: float = NEG_INF  # log P(frame paths that end in a blank and collapse to the prefix)
    char: float = NEG_INF  # ... that end in the prefix's last character

    def total(self) -> float:
        return _logsumexp(self.blank, self.char)


@dataclass
class LmReader:
    """CTC prefix beam search with a character language model (see the module docstring).

    ``prune``: classes whose log-probability in a frame is below it are not tried there (a
    frame's blank always is), and at most ``per_frame`` of the others: together they bound the
    work per frame (a line of noise, where every class is likely, costs no more than a few
    characters' worth) without changing what a confident reader reads."""

    lm: CharNgramLM
    alpha: float = 0.3
    beta: float = 2.0
    width: int = 12
    prune: float = -7.0
    per_frame: int = 6

    def _tried(self, log_probs: np.ndarray) -> list[list[int]]:
        """Per frame of ``log_probs`` (frames, classes), the non-blank classes tried there: those
        above ``prune``, at most the ``per_frame`` likeliest (by likelihood when there are more,
        else in class order). One sort for the line, not one per frame."""
        chars = log_probs[:, 1:]
        above = (chars > self.prune).sum(axis=1).tolist()
        likeliest = np.argsort(-chars, axis=1, kind="stable")[:, : self.per_frame].tolist()
        tried = []
        for n, order in zip(above, likeliest, strict=True):
            top = order if n > self.per_frame else sorted(order[:n])
            tried.append([i + 1 for i in top])
        return tried

    def read(self, log_probs: np.ndarray, charset: str) -> str:
        """The best line for ``log_probs`` (frames, 1 + len(charset)): class 0 is CTC's blank,
        class i the charset's character i - 1. Stripped, as ``Tokenizer.decode_ctc``."""
        if log_probs.ndim != 2 or log_probs.shape[1] != len(charset) + 1:
            raise ValueError(f"log_probs must be (frames, {len(charset) + 1}), got {log_probs.shape}")
        beams: dict[str, _Beam] = {"": _Beam(blank=0.0)}
        scores: dict[str, float] = {"": 0.0}  # the language model's part of each prefix's score
        rows = log_probs.astype(np.float64)
        collapsed = False  # every prefix's paths end in a blank (after a frame of only the blank)
        for row, tried in zip(rows, self._tried(rows), strict=True):
            if not tried:  # only the blank: every prefix stays, none is added
                # the first such frame moves each prefix's paths onto the blank; after it, another
                # adds the same log-probability to every prefix, which changes no ranking and no
                # later sum's order: it is skipped (the scores are relative)
                if not collapsed:
                    beams = {prefix: _Beam(blank=beam.total() + row[0]) for prefix, beam in beams.items()}
                    collapsed = True
                continue
            collapsed = False
            nxt: defaultdict[str, _Beam] = defaultdict(_Beam)
            for prefix, beam in beams.items():
                total = beam.total()
                stay = nxt[prefix]
                stay.blank = _logsumexp(stay.blank, total + row[0])
                last = prefix[-1] if prefix else None
                for i in tried:
                    ch = charset[i - 1]
                    grown = prefix + ch
                    if ch == last:
                        # the same character again: a repeat of it (prefix unchanged), or a new
                        # one only after a blank
                        stay.char = _logsumexp(stay.char, beam.char + row[i])
                        ext = nxt[grown]
                        ext.char = _logsumexp(ext.char, beam.blank + row[i])
                    else:
                        ext = nxt[grown]
                        ext.char = _logsumexp(ext.char, total + row[i])
                    if grown not in scores:
                        scores[grown] = scores[prefix] + self.alpha * self.lm.log_prob(prefix, ch) + self.beta
            ranked = sorted(nxt.items(), key=lambda item: item[1].total() + scores[item[0]], reverse=True)
            beams = dict(ranked[: self.width])
        best = max(
            beams.items(),
            key=lambda item: item[1].total() + scores[item[0]] + self.alpha * self.lm.log_prob(item[0], END),
        )
        return best[0].strip()


def lm_file_bytes(lm: CharNgramLM) -> bytes:
    """A fitted model as the file a model directory or export bundle ships (gzipped JSON of
    ``to_dict``: order, alphabet, every n-gram's count). ``mtime=0``: the same counts give the
    same bytes, so a refit of an unchanged recipe hashes the same."""
    text = json.dumps(lm.to_dict(), separators=(",", ":"), sort_keys=True)
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def read_lm_file(path: Path) -> CharNgramLM:
    """The model in ``path`` (``lm_file_bytes``' format). Kept per content hash: every server a
    test process starts, and both runtimes, share one parsed copy (~0.3 s to parse)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    lm = _loaded.get(digest)
    if lm is None:
        lm = CharNgramLM.from_dict(json.loads(gzip.decompress(data)))
        if len(_loaded) >= _LOADED_LIMIT:
            _loaded.clear()
        _loaded[digest] = lm
    return lm


def reader_params(reader: LmReader) -> dict[str, float | int]:
    """The search's settings, as a manifest or bundle.json describes them."""
    return {name: getattr(reader, name) for name in READER_PARAMS}


def shipped_section(reader: LmReader, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model manifest's ``MANIFEST_KEY`` section for ``reader`` shipped as ``LM_FILE`` (export
    copies it into bundle.json's ``tasks.ocr``); ``recipe``: how its counts were fitted."""
    return {
        "decode": DECODE,
        "language_model": LM_FILE,
        **reader_params(reader),
        "order": reader.lm.order,
        **({"recipe": recipe} if recipe is not None else {}),
    }


def ocr_decoding_of(model: object) -> str:
    """How ``model`` reads text lines: "lm" with a language-model reader attached (its
    ``ocr_reader``), else "greedy" (``model_info``'s ``ocr_decoding``, the canary report's)."""
    return "greedy" if getattr(model, "ocr_reader", None) is None else "lm"


def reader_from_file(path: Path, params: dict[str, Any], charset: str) -> LmReader:
    """The reader a description (``params``) asks for over the language model in ``path``, which
    must be fitted for ``charset``. ValueError when it is not, or a setting is missing."""
    lm = read_lm_file(path)
    if lm.alphabet != charset:
        raise ValueError("the language model's alphabet is not the reader's charset")
    return reader_from_params(lm, params)


def reader_from_params(lm: CharNgramLM, params: dict[str, Any]) -> LmReader:
    """The reader a description asks for; every setting must be given (a description missing
    one is refused rather than read with this release's defaults)."""
    missing = [name for name in READER_PARAMS if name not in params]
    if missing:
        raise ValueError(f"the OCR decoding description lacks {missing}")
    return LmReader(
        lm,
        alpha=float(params["alpha"]),
        beta=float(params["beta"]),
        width=int(params["width"]),
        prune=float(params["prune"]),
        per_frame=int(params["per_frame"]),
    )


def shipped_reader(directory: Path | None, manifest: dict[str, Any], charset: str) -> LmReader | None:
    """The reader a model directory ships (its manifest's ``MANIFEST_KEY`` section and the
    ``LM_FILE`` it names, written by ``training/ocr_lm.ship_ocr_lm``), or None when it ships none.
    The file must be listed among the manifest's files (whose hashes the loader verifies).
    ValueError when the description cannot be followed or the file cannot be read."""
    entry = manifest.get(MANIFEST_KEY)
    if directory is None or entry is None:
        return None
    try:
        if entry["decode"] != DECODE:
            raise ValueError(f"unknown OCR decoding {entry['decode']!r}")
        name = str(entry["language_model"])
        if name not in {str(f.get("path")) for f in manifest.get("files", [])}:
            raise ValueError(f"{name} is not among the manifest's files")
        return reader_from_file(directory / name, entry, charset)
    except (OSError, EOFError, zlib.error, KeyError, TypeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
