"""Evaluation metrics for the four tasks: captioning, OCR, VQA and retrieval.

Pure Python + numpy, written from the papers' definitions so the numbers in the eval report
mean what the literature means by them:

- CIDEr-D: Vedantam, Zitnick, Parikh, "CIDEr: Consensus-based Image Description Evaluation",
  CVPR 2015, in the "-D" form used by the MS-COCO caption evaluation (gaussian length penalty,
  clipped candidate n-gram weights, x10 scaling).
- BLEU-4: Papineni, Roukos, Ward, Zhu, "BLEU: a Method for Automatic Evaluation of Machine
  Translation", ACL 2002 (corpus level, brevity penalty against the closest reference length).
- CER: Levenshtein edit distance summed over the corpus / number of target characters.
- Recall@k: fraction of queries with a correct pool entry among the k best scored.

Usage::

    >>> cider_d(["a red circle"], [["a red circle", "a red ring"]])  # one image: idf is 0
    0.0
    >>> char_error_rate(["abd"], ["abc"])
    0.3333333333333333
    >>> bleu4(["the cat sat on the mat"], [["the cat sat on the mat"]])
    1.0

Every function validates its inputs and raises ``ValueError`` with a message saying what is
wrong: a silently truncated ``zip`` would report a metric over the wrong examples.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = [
    "bleu4",
    "char_error_rate",
    "cider_d",
    "exact_match_accuracy",
    "levenshtein",
    "recall_at_k",
    "tokenize",
    "word_accuracy",
]

NGram = tuple[str, ...]

# Punctuation becomes a separator rather than vanishing, so "red,blue" reads as two words
# (the COCO evaluation's PTB tokenizer also splits there before dropping the punctuation).
_PUNCT_TO_SPACE = str.maketrans(dict.fromkeys(string.punctuation, " "))


def tokenize(text: str) -> list[str]:
    """Lowercase, turn punctuation into spaces, split on whitespace: ``"A red, circle."`` → 3 tokens."""
    return text.lower().translate(_PUNCT_TO_SPACE).split()


def _check_pairs(name_a: str, a: Sequence[object], name_b: str, b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same length: got {len(a)} {name_a} and {len(b)} {name_b}"
        )
    if len(a) == 0:
        raise ValueError(f"{name_a} is empty: a metric over zero examples is undefined")


def _check_references(references: Sequence[Sequence[str]]) -> None:
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            # probably a user error (a flat list of strings), so raise rather than score characters
            raise ValueError(f"references[{i}] is a str; each entry must be a list of reference strings")
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is empty: each candidate needs at least one reference")


def _ngrams(tokens: Sequence[str], n: int) -> Counter[NGram]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# --------------------------------------------------------------------------- CIDEr-D


def _tfidf(
    tokens: Sequence[str], n_max: int, doc_freq: Counter[NGram], log_n_docs: float
) -> tuple[list[dict[NGram, float]], list[float]]:
    """Per n-gram order: tf-idf vector (raw count x idf) and its L2 norm."""
    vectors: list[dict[NGram, float]] = []
    norms: list[float] = []
    for n in range(1, n_max + 1):
        # max(1, df): an n-gram seen in no reference gets the largest idf, log(N), not a division by 0
        vec = {g: c * (log_n_docs - math.log(max(1.0, doc_freq[g]))) for g, c in _ngrams(tokens, n).items()}
        vectors.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vectors, norms


def cider_d(candidates: list[str], references: list[list[str]], sigma: float = 6.0, n: int = 4) -> float:
    """Corpus CIDEr-D of ``candidates[i]`` against ``references[i]`` (a list of strings each).

    For each image and each n-gram order 1..n, the candidate and each reference become tf-idf
    vectors (term count x log(N / df), df = number of images whose reference set contains the
    n-gram, N = number of images in the evaluated corpus). Their similarity is
    ``sum_g min(c_g, r_g) * r_g / (|c| |r|)`` — the min clips n-grams the candidate repeats more
    often than the reference (the "-D" gaming fix) — times ``exp(-(len_c - len_r)^2 / (2 sigma^2))``.
    Averaged over orders and references, times 10, then averaged over images.

    Consequences of the definition worth knowing: on a one-image corpus every idf is 0 and the
    score is 0; an n-gram present in every image's references carries no weight; a candidate
    shorter than n tokens scores 0 for that order.

    >>> round(cider_d(["a red circle", "a blue square"], [["a red circle"], ["a blue square"]]), 6)
    7.5
    """
    _check_pairs("candidates", candidates, "references", references)
    _check_references(references)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")

    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    doc_freq: Counter[NGram] = Counter()
    for refs in ref_tokens:
        # each image counts once per n-gram, however many of its references contain it
        doc_freq.update({g for toks in refs for k in range(1, n + 1) for g in _ngrams(toks, k)})
    log_n_docs = math.log(float(len(references)))

    scores = []
    for cand, refs in zip(candidates, ref_tokens, strict=True):
        cand_tokens = tokenize(cand)
        c_vecs, c_norms = _tfidf(cand_tokens, n, doc_freq, log_n_docs)
        per_ref = np.zeros(n)
        for ref in refs:
            r_vecs, r_norms = _tfidf(ref, n, doc_freq, log_n_docs)
            delta = float(len(cand_tokens) - len(ref))
            penalty = math.exp(-(delta**2) / (2.0 * sigma**2))
            for k in range(n):
                if c_norms[k] == 0.0 or r_norms[k] == 0.0:
                    continue  # no weighted n-grams of this order on one side: similarity 0
                dot = sum(min(w, r_vecs[k].get(g, 0.0)) * r_vecs[k].get(g, 0.0) for g, w in c_vecs[k].items())
                per_ref[k] += dot / (c_norms[k] * r_norms[k]) * penalty
        scores.append(10.0 * float(per_ref.mean()) / len(refs))
    return float(np.mean(scores))


# --------------------------------------------------------------------------- BLEU-4


def bleu4(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (uniform weights, no smoothing) with the brevity penalty.

    Clipped n-gram matches and candidate n-gram totals are summed over the corpus before the
    precisions are taken (corpus level, as in the paper, not a mean of sentence scores). The
    effective reference length is, per sentence, the reference length closest to the
    candidate's (the shorter on a tie). Any order with zero matches makes the score 0.

    >>> bleu4(["a red circle on the left"], [["a red circle on the right"]])  # doctest: +ELLIPSIS
    0.75...
    """
    _check_pairs("candidates", candidates, "references", references)
    _check_references(references)
    matches = np.zeros(4)
    totals = np.zeros(4)
    cand_len = 0
    ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        c_toks = tokenize(cand)
        r_toks = [tokenize(r) for r in refs]
        cand_len += len(c_toks)
        ref_len += min((abs(len(r) - len(c_toks)), len(r)) for r in r_toks)[1]
        for k in range(4):
            c_grams = _ngrams(c_toks, k + 1)
            max_ref: Counter[NGram] = Counter()
            for r in r_toks:
                max_ref |= _ngrams(r, k + 1)  # | keeps the max count per n-gram over references
            matches[k] += sum(min(c, max_ref[g]) for g, c in c_grams.items())
            totals[k] += sum(c_grams.values())
    if cand_len == 0 or np.any(matches == 0):
        return 0.0
    log_precision = float(np.mean(np.log(matches / totals)))
    brevity = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


# --------------------------------------------------------------------------- OCR


def levenshtein(a: str, b: str) -> int:
    """Minimum number of single-character insertions, deletions and substitutions turning a into b.

    >>> levenshtein("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a  # keep the row (length of b) the shorter one
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_error_rate(predictions: list[str], targets: list[str]) -> float:
    """Total Levenshtein edits over the corpus / total target characters (can exceed 1).

    >>> char_error_rate(["abd", "xy"], ["abc", "xy"])
    0.2
    """
    _check_pairs("predictions", predictions, "targets", targets)
    n_chars = sum(len(t) for t in targets)
    if n_chars == 0:
        raise ValueError("targets contain no characters: CER (edits per target character) is undefined")
    edits = sum(levenshtein(p, t) for p, t in zip(predictions, targets, strict=True))
    return edits / n_chars


def word_accuracy(predictions: list[str], targets: list[str]) -> float:
    """Fraction of predictions equal to their target after ``.strip()`` (case-sensitive).

    >>> word_accuracy(["Hello ", "world"], ["Hello", "World"])
    0.5
    """
    _check_pairs("predictions", predictions, "targets", targets)
    hits = sum(p.strip() == t.strip() for p, t in zip(predictions, targets, strict=True))
    return hits / len(targets)


# --------------------------------------------------------------------------- VQA


def _normalise_answer(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match_accuracy(predictions: list[str], targets: list[str]) -> float:
    """Fraction of answers equal to the target ignoring case and runs of whitespace.

    >>> exact_match_accuracy(["Red", " two  circles"], ["red", "two circles"])
    1.0
    """
    _check_pairs("predictions", predictions, "targets", targets)
    hits = sum(
        _normalise_answer(p) == _normalise_answer(t) for p, t in zip(predictions, targets, strict=True)
    )
    return hits / len(targets)


# --------------------------------------------------------------------------- retrieval


def recall_at_k(similarity: np.ndarray, correct: np.ndarray, k: int) -> float:
    """Fraction of queries (rows) whose k best-scored pool entries include a correct one.

    ``similarity`` is (Q, P) scores; ``correct`` is a (Q, P) boolean matrix, so several pool
    entries (e.g. identical captions) can all count as right for one query. Ties are broken
    against the query: the best correct entry's rank is the number of *incorrect* entries
    scoring at least as high, and it is a hit when that rank is below k. So a model that gives
    every entry the same score gets recall ~k/P, not 1.0.

    >>> recall_at_k(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[True, False], [True, False]]), k=1)
    0.5
    """
    sim = np.asarray(similarity, dtype=np.float64)
    ok = np.asarray(correct)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D (queries, pool), got shape {sim.shape}")
    if ok.shape != sim.shape:
        raise ValueError(f"correct has shape {ok.shape}, similarity has shape {sim.shape}: they must match")
    if ok.dtype != np.bool_:
        raise ValueError(f"correct must be a boolean matrix, got dtype {ok.dtype}")
    n_queries, pool = sim.shape
    if n_queries == 0 or pool == 0:
        raise ValueError(f"similarity is empty (shape {sim.shape}): recall over zero queries is undefined")
    if not 1 <= k <= pool:
        raise ValueError(f"k must be in 1..{pool} (the pool size), got {k}")
    if not np.all(np.isfinite(sim)):
        raise ValueError("similarity contains NaN or infinite scores")
    missing = np.flatnonzero(~ok.any(axis=1))
    if missing.size:
        raise ValueError(f"{missing.size} queries have no correct pool entry (first: row {int(missing[0])})")

    best_correct = np.where(ok, sim, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    rank = np.sum(~ok & (sim >= best_correct), axis=1)  # (Q,) incorrect entries at or above it
    return float(np.mean(rank < k))
