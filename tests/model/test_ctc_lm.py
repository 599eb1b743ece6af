"""Reading lines with a character language model: the n-gram model, the CTC prefix beam search,
and what it changes on the bundled model's reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mobile_multimodal.model.ctc_lm import (
    END,
    CharNgramLM,
    LmReader,
    lm_file_bytes,
    read_lm_file,
    reader_from_params,
    reader_params,
)
from mobile_multimodal.model.tokenizer import Tokenizer

CHARSET = " Ileimst"
TOK = Tokenizer(words=[], charset=CHARSET)


def frames(*columns: dict[str, float], charset: str = CHARSET) -> np.ndarray:
    """Log-probabilities (frames, 1 + len(charset)): each frame's named classes ("-" is the
    blank) get their probability, the others almost none."""
    rows = []
    for column in columns:
        p = np.full(len(charset) + 1, 1e-6)
        for name, value in column.items():
            p[0 if name == "-" else charset.index(name) + 1] = value
        rows.append(np.log(p / p.sum()))
    return np.stack(rows)


def test_the_model_is_a_distribution_over_the_alphabet_and_the_end() -> None:
    lm = CharNgramLM.fit(["Item 4", "tem", "mel", "elm"], order=3, alphabet=CHARSET + "4")
    for prefix in ("", "It", "li", "zzz"):
        total = sum(math.exp(lm.log_prob(prefix, c)) for c in [*lm.alphabet, END])
        assert total == pytest.approx(1.0, abs=1e-9)


def test_the_model_prefers_the_spelling_it_was_fitted_on() -> None:
    lm = CharNgramLM.fit(["Item", "Items", "item"], order=4, alphabet=CHARSET)
    assert lm.log_prob("", "I") > lm.log_prob("", "l")
    assert lm.log_prob("I", "t") > lm.log_prob("l", "t")


def test_a_text_outside_the_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the alphabet"):
        CharNgramLM.fit(["Item", "tame"], order=3, alphabet=CHARSET)  # no "a"


def test_counts_round_trip_through_a_dict() -> None:
    lm = CharNgramLM.fit(["Item 4", "time"], order=3)
    again = CharNgramLM.from_dict(lm.to_dict())
    assert again.log_prob("It", "e") == lm.log_prob("It", "e")
    assert again.log_prob("ti", END) == lm.log_prob("ti", END)


def test_a_pruned_model_drops_rare_long_ngrams_and_is_still_a_distribution() -> None:
    lm = CharNgramLM.fit(["Item 4", "Item 4", "time", "mile"], order=4, alphabet=CHARSET + "4")
    pruned = lm.pruned(min_count=2, from_order=3)
    assert set(pruned.counts) < set(lm.counts)
    assert all(len(g) < 3 or c >= 2 for g, c in pruned.counts.items())
    assert all(pruned.counts[g] == lm.counts[g] for g in lm.counts if len(g) < 3)
    for prefix in ("", "It", "ti", "mil"):
        total = sum(math.exp(pruned.log_prob(prefix, c)) for c in [*pruned.alphabet, END])
        assert total == pytest.approx(1.0, abs=1e-9)
    assert pruned.log_prob("Ite", "m") > pruned.log_prob("Ite", "s")  # seen twice: kept


def test_the_shipped_file_is_deterministic_and_its_description_complete(tmp_path: Path) -> None:
    lm = CharNgramLM.fit(["Item 4", "time"], order=3)
    data = lm_file_bytes(lm)
    assert data == lm_file_bytes(CharNgramLM.fit(["Item 4", "time"], order=3))  # no timestamp inside
    (tmp_path / "lm.json.gz").write_bytes(data)
    again = read_lm_file(tmp_path / "lm.json.gz")
    assert again.counts == lm.counts and read_lm_file(tmp_path / "lm.json.gz") is again  # parsed once
    reader = LmReader(lm, alpha=0.5, beta=1.0, width=4, prune=-5.0, per_frame=3)
    params = reader_params(reader)
    assert reader_from_params(lm, params) == reader
    with pytest.raises(ValueError, match=r"lacks \['width'\]"):
        reader_from_params(lm, {k: v for k, v in params.items() if k != "width"})
    with pytest.raises(ValueError, match="not a char-ngram-witten-bell model"):
        CharNgramLM.from_dict({**lm.to_dict(), "kind": "word-ngram"})


def test_without_the_model_a_confident_reader_reads_what_greedy_reads() -> None:
    rng = np.random.default_rng(0)
    lm = CharNgramLM.fit(["unrelated text"], order=3)
    plain = LmReader(lm, alpha=0.0, beta=0.0)
    for _ in range(20):
        best = rng.integers(0, len(CHARSET) + 1, size=24)  # blanks, repeats and characters
        log_probs = frames(*({("-" if i == 0 else CHARSET[i - 1]): 0.97} for i in best))
        greedy = TOK.decode_ctc(best.tolist())
        assert plain.read(log_probs, CHARSET) == greedy


def test_a_glyph_two_letters_share_is_read_as_the_word_the_model_knows() -> None:
    # "I" and "l" look the same in many sans-serif fonts: the reader gives them equal odds
    log_probs = frames(
        {"I": 0.5, "l": 0.5}, {"-": 0.99}, {"t": 0.99}, {"-": 0.99}, {"e": 0.99}, {"-": 0.99}, {"m": 0.99}
    )
    lm = CharNgramLM.fit(["Item", "Items", "Item list"], order=4, alphabet=CHARSET)
    assert LmReader(lm).read(log_probs, CHARSET) == "Item"


def test_a_doubled_letter_is_kept_when_the_model_knows_it() -> None:
    # "ll" with a faint blank between the two l's: greedy reads one l
    charset = "eilm"
    log_probs = frames(
        {"m": 0.99}, {"i": 0.99}, {"l": 0.9}, {"l": 0.55, "-": 0.45}, {"l": 0.9}, {"e": 0.99}, charset=charset
    )
    assert Tokenizer(words=[], charset=charset).decode_ctc(log_probs.argmax(-1).tolist()) == "mile"
    lm = CharNgramLM.fit(["mille", "mill", "ill", "ell", "mell"], order=4, alphabet=charset)
    assert LmReader(lm, alpha=0.0, beta=0.0).read(log_probs, charset) == "mile"  # the frames alone
    assert LmReader(lm, alpha=1.0, beta=0.0).read(log_probs, charset) == "mille"


def test_the_log_probabilities_must_match_the_charset() -> None:
    lm = CharNgramLM.fit(["a"], order=2)
    with pytest.raises(ValueError, match="must be"):
        LmReader(lm).read(np.zeros((4, 3)), CHARSET)


def test_a_frame_tries_only_its_likeliest_classes_above_the_floor() -> None:
    # a line of noise makes every class likely in every frame: the work per frame stays bounded
    reader = LmReader(CharNgramLM.fit(["a"], order=2), per_frame=3, prune=-5.0)
    row = np.log(np.array([0.3, 0.02, 0.25, 0.001, 0.2, 0.229]))
    assert reader._tried(row[None]) == [[2, 5, 4]]  # by likelihood; 1 is fourth, 3 under the floor
    assert reader._tried(np.log(np.array([[0.999, 0.0005, 0.0005]]))) == [[]]  # only the blank
