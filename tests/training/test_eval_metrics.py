"""Tests for the evaluation metrics: hand-computed values and properties."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobile_multimodal.training import eval_metrics
from mobile_multimodal.training.eval_metrics import (
    bleu4,
    char_error_rate,
    cider_d,
    exact_match_accuracy,
    levenshtein,
    recall_at_k,
    tokenize,
    word_accuracy,
)

L2 = math.log(2.0)  # idf of an n-gram found in one of two images: log(N) - log(df) = log 2 - log 1


def test_docstring_examples_hold() -> None:
    failures, tried = doctest.testmod(eval_metrics, verbose=False)
    assert tried >= 8
    assert failures == 0


def test_tokenize_lowercases_and_strips_punctuation() -> None:
    assert tokenize("A Red,circle.  On the LEFT!") == ["a", "red", "circle", "on", "the", "left"]
    assert tokenize("...") == []


# --------------------------------------------------------------------------- CIDEr-D


def test_cider_d_candidate_equal_to_all_references() -> None:
    # Corpus of N=2 images, so idf(g) = log 2 - log df(g).
    # Image 1 refs: "a red circle" (twice); image 2 ref: "a blue square".
    # n=1: "a" is in both images -> df=2 -> idf 0; red, circle, blue, square -> df=1 -> idf log 2.
    #   Image 1 candidate vector = reference vector = (a:0, red:L, circle:L): cosine 1.
    # n=2: "a red", "red circle" both df=1 -> vectors equal and non-zero: cosine 1.
    # n=3: "a red circle" df=1: cosine 1.
    # n=4: a 3-token sentence has no 4-grams -> zero norm -> similarity 0 (by definition).
    # Length penalty exp(-0^2 / 72) = 1. Per reference: mean(1, 1, 1, 0) = 0.75; summed over the
    # two identical references = 1.5, divided by 2 references = 0.75, x10 = 7.5. Image 2 alike.
    score = cider_d(["a red circle", "a blue square"], [["a red circle", "A red circle."], ["a blue square"]])
    assert score == pytest.approx(7.5, abs=1e-12)


def test_cider_d_partial_overlap_hand_computed() -> None:
    # Image 2 candidate "a blue square" vs ref "a green square" (image 1 is an exact match: 7.5).
    # n=1: cand (a:0, blue:L [df 0 -> max(1, 0) -> idf log 2], square:L); ref (a:0, green:L, square:L).
    #   dot = sum over cand grams of min(c, r) * r = 0 + min(L, 0)*0 + L*L = L^2;
    #   |c| = |r| = sqrt(2) L -> 1/2.
    # n=2: {a blue, blue square} vs {a green, green square}: no shared bigram -> 0; n=3, n=4: 0.
    # Image 2 = 10 * mean(0.5, 0, 0, 0) = 1.25.  Corpus = (7.5 + 1.25) / 2 = 4.375.
    score = cider_d(["a red circle", "a blue square"], [["a red circle"], ["a green square"]])
    assert score == pytest.approx(4.375, abs=1e-12)


def test_cider_d_length_penalty_hand_computed() -> None:
    # Image 2 candidate "square" (1 token) vs ref "a green square" (3 tokens).
    # n=1: cand (square:L), ref (a:0, green:L, square:L): dot L^2 / (L * sqrt(2) L) = 1/sqrt(2).
    # n>=2: the candidate has no bigrams -> 0.  Penalty exp(-(1-3)^2 / (2 * 6^2)) = exp(-4/72).
    # Image 2 = 10 * (1/sqrt(2) * exp(-1/18)) / 4.  Image 1 (exact) = 7.5.
    expected_img2 = 10.0 * (1 / math.sqrt(2.0)) * math.exp(-4.0 / 72.0) / 4.0
    score = cider_d(["a red circle", "square"], [["a red circle"], ["a green square"]])
    assert score == pytest.approx((7.5 + expected_img2) / 2, abs=1e-12)
    # sigma is the gaussian's width: a wider one forgives the same length gap more
    assert cider_d(["a red circle", "square"], [["a red circle"], ["a green square"]], sigma=60.0) > score


def test_cider_d_clips_repeated_ngrams() -> None:
    # Image 2 candidate "red red red" vs ref "red circle"; image 1 "blue square" both sides.
    # n=1: cand (red: 3L), ref (red:L, circle:L). Clipped dot = min(3L, L) * L = L^2;
    #   |c| = 3L, |r| = sqrt(2) L -> 1 / (3 sqrt 2).  (Unclipped it would be 3L^2 / (3 sqrt2 L^2) = 1/sqrt 2.)
    # n=2: (red red: 2L) vs (red circle: L): no overlap -> 0; n=3: 0; n=4: no 4-grams -> 0.
    # Length penalty exp(-(3-2)^2 / 72).
    expected_img2 = 10.0 * (1 / (3 * math.sqrt(2.0))) * math.exp(-1.0 / 72.0) / 4.0
    # image 1: 2 tokens -> orders 1 and 2 similar (cosine 1), 3 and 4 empty -> 10 * 2/4 = 5
    score = cider_d(["blue square", "red red red"], [["blue square"], ["red circle"]])
    assert score == pytest.approx((5.0 + expected_img2) / 2, abs=1e-12)


def test_cider_d_averages_over_references() -> None:
    # Image 1 cand "a red circle" vs refs ["a red circle", "a blue square"] (image 2: "a green star").
    # df over 2 images: a:2 (idf 0), red/circle/blue/square/green/star: 1 each.
    # Ref 1 identical: orders 1-3 give 1, order 4 gives 0 -> sum 3.
    # Ref 2 "a blue square": no shared weighted n-gram -> 0.  Image 1 = 10 * (3/4 + 0) / 2 = 3.75.
    # Image 2 exact: 7.5.  Corpus = 5.625.
    score = cider_d(["a red circle", "a green star"], [["a red circle", "a blue square"], ["a green star"]])
    assert score == pytest.approx(5.625, abs=1e-12)


def test_cider_d_single_image_corpus_is_zero_by_definition() -> None:
    # N=1: every reference n-gram has idf log(1) - log(1) = 0, so all reference vectors vanish.
    assert cider_d(["a red circle"], [["a red circle"]]) == 0.0


def test_cider_d_rewards_the_better_caption() -> None:
    refs = [["a red circle on the left"], ["a blue square at the top"], ["two green stars"]]
    good = cider_d(["a red circle on the left", "a blue square at the top", "two green stars"], refs)
    worse = cider_d(["a red circle on the left", "a blue circle at the top", "two green stars"], refs)
    bad = cider_d(["one yellow triangle", "one yellow triangle", "one yellow triangle"], refs)
    assert good > worse > bad == 0.0


@pytest.mark.parametrize(
    ("cands", "refs", "message"),
    [
        (["a"], [["a"], ["b"]], "same length"),
        ([], [], "empty"),
        (["a", "b"], [["a"], []], "references\\[1\\] is empty"),
        (["a"], ["a"], "is a str"),
    ],
)
def test_cider_d_and_bleu_reject_bad_input(cands: list[str], refs: list[list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cider_d(cands, refs)
    with pytest.raises(ValueError, match=message):
        bleu4(cands, refs)


# --------------------------------------------------------------------------- BLEU-4


def test_bleu4_identical_is_one() -> None:
    cands = ["the cat sat on the mat", "a red circle on the left"]
    assert bleu4(cands, [[c] for c in cands]) == pytest.approx(1.0)


def test_bleu4_hand_computed_with_clipping() -> None:
    # cand "the the the the the" vs ref "the cat is on the mat" has p1 = 2/5 (clipped) but no bigram -> 0.
    assert bleu4(["the the the the the"], [["the cat is on the mat"]]) == 0.0
    # cand "a red circle on the left" vs "a red circle on the right": p1..p4 = 5/6, 4/5, 3/4, 2/3,
    # geometric mean (1/3)^(1/4); same length -> no brevity penalty.
    assert bleu4(["a red circle on the left"], [["a red circle on the right"]]) == pytest.approx(
        (1 / 3) ** 0.25
    )


def test_bleu4_brevity_penalty_uses_closest_reference_and_corpus_totals() -> None:
    # cand 4 tokens, refs of 4 and 8 tokens: the closest (4) is used -> no penalty, all precisions 1.
    assert bleu4(["a b c d"], [["a b c d", "a b c d e f g h"]]) == pytest.approx(1.0)
    # corpus: cand lengths 4 + 4 = 8, closest ref lengths 4 + 6 = 10, precisions 1 -> BP = exp(1 - 10/8)
    got = bleu4(["a b c d", "e f g h"], [["a b c d"], ["e f g h i j"]])
    assert got == pytest.approx(math.exp(1 - 10 / 8))


# --------------------------------------------------------------------------- OCR


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "ab", 2),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("abc", "abd", 1),
    ],
)
def test_levenshtein_known_values(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d


_text = st.text(alphabet="abcd ", max_size=12)


@given(_text, _text)
def test_levenshtein_symmetric_and_zero_iff_equal(a: str, b: str) -> None:
    assert levenshtein(a, b) == levenshtein(b, a)
    assert (levenshtein(a, b) == 0) == (a == b)
    assert abs(len(a) - len(b)) <= levenshtein(a, b) <= max(len(a), len(b))


@given(_text, _text, _text)
def test_levenshtein_triangle_inequality(a: str, b: str, c: str) -> None:
    assert levenshtein(a, c) <= levenshtein(a, b) + levenshtein(b, c)


def test_cer_hand_computed() -> None:
    assert char_error_rate(["abd"], ["abc"]) == pytest.approx(1 / 3)
    # edits summed over the corpus (1 + 0 + 3) over target characters summed (3 + 2 + 3)
    assert char_error_rate(["abd", "xy", ""], ["abc", "xy", "pqr"]) == pytest.approx(4 / 8)
    # insertions count too, so CER can exceed 1
    assert char_error_rate(["abcdef"], ["ab"]) == pytest.approx(2.0)


@given(st.lists(st.tuples(_text, st.text(alphabet="abcd ", min_size=1, max_size=12)), min_size=1, max_size=5))
def test_cer_zero_iff_all_equal(pairs: list[tuple[str, str]]) -> None:
    preds = [p for p, _ in pairs]
    targets = [t for _, t in pairs]
    cer = char_error_rate(preds, targets)
    assert cer >= 0.0
    assert (cer == 0.0) == (preds == targets)
    assert char_error_rate(targets, targets) == 0.0


def test_cer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        char_error_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no characters"):
        char_error_rate(["a"], [""])
    with pytest.raises(ValueError, match="empty"):
        char_error_rate([], [])


def test_word_accuracy_strips_but_keeps_case() -> None:
    assert word_accuracy(["hello ", " world", "Foo"], ["hello", "world", "foo"]) == pytest.approx(2 / 3)
    assert word_accuracy(["a"], ["b"]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        word_accuracy(["a", "b"], ["a"])


# --------------------------------------------------------------------------- VQA


def test_exact_match_normalises_case_and_whitespace() -> None:
    assert exact_match_accuracy(["Red", "two  Circles ", "left"], ["red", "two circles", "right"]) == (
        pytest.approx(2 / 3)
    )
    assert exact_match_accuracy(["twocircles"], ["two circles"]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        exact_match_accuracy([], ["a"])


# --------------------------------------------------------------------------- retrieval


def test_recall_at_k_basic() -> None:
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.7, 0.6, 0.5]])
    correct = np.eye(3, dtype=bool)
    # query 0: correct entry ranked 1st; query 1: 2nd of 3 (0.3 below 0.8); query 2: 3rd
    assert recall_at_k(sim, correct, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, correct, 2) == pytest.approx(2 / 3)
    assert recall_at_k(sim, correct, 3) == pytest.approx(1.0)


def test_recall_at_k_duplicates_all_count() -> None:
    # pool entries 1 and 2 are identical captions: both count for query 0, which scores entry 2 best
    sim = np.array([[0.1, 0.2, 0.9], [0.8, 0.1, 0.0]])
    correct = np.array([[False, True, True], [True, False, False]])
    assert recall_at_k(sim, correct, 1) == pytest.approx(1.0)
    only_first = np.array([[False, True, False], [True, False, False]])
    assert recall_at_k(sim, only_first, 1) == pytest.approx(0.5)


def test_recall_at_k_ties_count_against_the_query() -> None:
    # a model that scores everything the same must not get perfect recall
    sim = np.zeros((4, 4))
    correct = np.eye(4, dtype=bool)
    assert recall_at_k(sim, correct, 1) == 0.0
    assert recall_at_k(sim, correct, 4) == 1.0  # 3 incorrect entries tie: rank 3 < 4
    # tie between the correct entry and one incorrect entry: rank 1, a hit at k=2, not at k=1
    sim2 = np.array([[0.5, 0.5, 0.1]])
    correct2 = np.array([[True, False, False]])
    assert recall_at_k(sim2, correct2, 1) == 0.0
    assert recall_at_k(sim2, correct2, 2) == 1.0


def test_recall_at_k_rejects_bad_input() -> None:
    sim = np.zeros((2, 3))
    ok = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(sim, np.ones((3, 2), dtype=bool), 1)
    with pytest.raises(ValueError, match="boolean"):
        recall_at_k(sim, np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.3"):
        recall_at_k(sim, ok, 4)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(sim, ok, 0)
    with pytest.raises(ValueError, match="no correct pool entry"):
        recall_at_k(sim, np.array([[True, False, False], [False, False, False]]), 1)
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[np.nan, 0.0, 0.0]]), np.array([[True, False, False]]), 1)
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(np.zeros(3), np.ones(3, dtype=bool), 1)
