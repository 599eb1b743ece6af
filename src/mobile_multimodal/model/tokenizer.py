"""Our tokenizer: a closed word vocabulary for captions, questions and answers, and a character
set for the OCR head (CTC). Serialised into the model manifest.

The charset is the model's own (manifest ``tokenizer.charset``; a manifest without one gets the
lowercase charset of the first models). A charset without capital letters reads text
case-folded (``encode_chars("Hello")`` targets "hello"); one with them (printable ASCII,
``CHARSETS["ascii"]``) reads it as written.

A token is a run of letters/digits or one of ``? , :``, so a text never has more tokens than
characters: a limit in characters bounds the work of counting before any list is built.

Example::

    tok = Tokenizer.default()
    tok.encode("what color is the circle ?")       # six word ids
    tok.count("is " + "a " * 100_000, stop_after=36)  # 37: stopped as soon as it passed 36
    Tokenizer.default(CHARSETS["ascii"]).encode_chars("Hi!")  # [41, 74, 2]: case and "!" kept
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mobile_multimodal.data.vocabulary import COLORS, NUMBER_WORDS, OCR_CHARSET, POSITIONS, SHAPES, SIZES

PAD, BOS, EOS, UNK, SEP = "<pad>", "<bos>", "<eos>", "<unk>", "<sep>"
TASK_TOKENS = {"captioning": "<caption>", "vqa": "<vqa>", "ocr": "<ocr>"}
SPECIALS = (PAD, BOS, EOS, UNK, SEP, *TASK_TOKENS.values())

# Words of the scene language, our question templates and easy-VQA's questions and answers.
_BASE_WORDS = [
    "a",
    "an",
    "and",
    "the",
    "is",
    "there",
    "at",
    "on",
    "in",
    "of",
    "to",
    "what",
    "where",
    "which",
    "how",
    "many",
    "color",
    "colour",
    "shape",
    "shapes",
    "size",
    "object",
    "objects",
    "are",
    "not",
    "does",
    "contain",
    "image",
    "present",
    "yes",
    "no",
    ",",
    ":",
    "?",
    "this",
    "picture",
]

_SPLIT = re.compile(r"[a-z0-9]+|[?,:]")


def _default_words() -> list[str]:
    words: list[str] = []
    for w in [
        *_BASE_WORDS,
        *COLORS,
        *SHAPES,
        *SIZES,
        *NUMBER_WORDS,
        *(p for pos in POSITIONS for p in pos.split()),
    ]:
        if w not in words:
            words.append(w)
    return words


@dataclass
class Tokenizer:
    words: list[str]
    charset: str = OCR_CHARSET

    def __post_init__(self) -> None:
        if len(set(self.charset)) != len(self.charset) or not self.charset:
            raise ValueError("the OCR charset must be non-empty without repeated characters")
        self.itos = [*SPECIALS, *self.words]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("tokenizer vocabulary has duplicates")

    @classmethod
    def default(cls, charset: str = OCR_CHARSET) -> Tokenizer:
        return cls(words=_default_words(), charset=charset)

    @property
    def folds_case(self) -> bool:
        """True for a charset without capital letters: OCR text is lower-cased to fit it."""
        return not any(c.isupper() for c in self.charset)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def ctc_classes(self) -> int:
        return len(self.charset) + 1  # 0 is the CTC blank

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def bos_id(self) -> int:
        return self.stoi[BOS]

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    @property
    def sep_id(self) -> int:
        return self.stoi[SEP]

    def task_id(self, task: str) -> int:
        return self.stoi[TASK_TOKENS[task]]

    def split(self, text: str) -> list[str]:
        return _SPLIT.findall(text.lower())

    def count(self, text: str, stop_after: int | None = None) -> int:
        """How many tokens ``encode(text)`` would give, without building the list. With
        ``stop_after`` it stops counting at ``stop_after + 1``: enough to say "too long" about a
        100k-word text after reading only its first words."""
        n = 0
        for _ in _SPLIT.finditer(text.lower()):
            n += 1
            if stop_after is not None and n > stop_after:
                break
        return n

    def encode(self, text: str) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi.get(w, unk) for w in self.split(text)]

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            tok = self.itos[i] if 0 <= i < len(self.itos) else UNK
            if tok in SPECIALS:
                continue
            out.append(tok)
        return " ".join(out)

    def prompt(self, task: str, question: str | None = None) -> list[int]:
        """<bos> <task> [question tokens] <sep>: the decoder continues after <sep>."""
        ids = [self.bos_id, self.task_id(task)]
        if question:
            ids += self.encode(question)
        return [*ids, self.sep_id]

    def encode_chars(self, text: str) -> list[int]:
        """CTC targets: 1..len(charset); characters outside the charset are dropped (after
        lower-casing, for a charset that has no capital letters)."""
        chars = text.lower() if self.folds_case else text
        return [self.charset.index(c) + 1 for c in chars if c in self.charset]

    def decode_ctc(self, ids: list[int]) -> str:
        out, prev = [], 0
        for i in ids:
            if i != prev and i != 0:
                out.append(self.charset[i - 1])
            prev = i
        return "".join(out).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "word+ctc-chars", "words": self.words, "charset": self.charset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        # a manifest written before charsets varied may lack one: those models read OCR_CHARSET
        return cls(words=list(d["words"]), charset=str(d.get("charset", OCR_CHARSET)))
