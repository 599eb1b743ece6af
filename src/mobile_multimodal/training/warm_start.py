"""Start a model of one architecture from a trained model of a close one (`train --init-from`).

Issue 18's model reads printable ASCII through a 512-px reader (``default-wide-ocr``); the bundled
model reads lowercase through a 256-px one (``default``). Everything else is the same network, and
training it again from scratch costs two hours and lost to the bundled model on every split it
already met. So a continuation starts from the bundled weights and changes only what differs:

- every tensor whose name and shape match is copied;
- the column position table grows: its first rows are copied (a 64-px scene uses 8 of them, a
  256-px line 32, so what the model already reads keeps its positions) and the new rows start
  from the last trained one;
- the CTC reader's output rows are matched by character: a character both sets have keeps its
  row (for every sub-frame), a new one (upper case, punctuation) keeps its fresh initialisation;
- a full-resolution scene stage the source lacks (``ModelConfig.scene_detail``) keeps its fresh
  initialisation: its way into the stem starts at zero, so the target still computes what the
  source computed, on a scene read at twice the size.

Anything else that differs in shape is an error naming it: a silent fresh start of a trained part
would waste the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mobile_multimodal.model.llm import MobileMultiModalLLM

COLUMN_POSITIONS = "encoder.col_pos"
CTC_OUTPUT = ("ocr_head.fc2.weight", "ocr_head.fc2.bias")
SCENE_DETAIL = "encoder.scene_detail."


@dataclass
class WarmStart:
    """What was carried over, for the manifest and the log."""

    copied: int = 0
    fresh: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    characters_kept: int = 0
    characters_new: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "tensors_copied": self.copied,
            "tensors_fresh": self.fresh,
            "grown": self.grown,
            "ocr_characters_kept": self.characters_kept,
            "ocr_characters_new": "".join(self.characters_new),
        }


def _ctc_rows(
    source: MobileMultiModalLLM, target: MobileMultiModalLLM
) -> tuple[list[int], list[int], list[str]]:
    """(target rows, source rows) of the characters both readers have, blank first, for every
    sub-frame; and the target's characters the source lacks."""
    src_chars = {ch: i for i, ch in enumerate(source.tokenizer.charset)}
    pairs = [(0, 0)]  # CTC blank
    new: list[str] = []
    for i, ch in enumerate(target.tokenizer.charset):
        if ch in src_chars:
            pairs.append((1 + i, 1 + src_chars[ch]))
        else:
            new.append(ch)
    sub = target.config.ocr_subframes
    if source.config.ocr_subframes != sub:
        raise ValueError(f"the reader's sub-frames differ ({source.config.ocr_subframes} -> {sub})")
    n_src, n_dst = source.config.ocr_classes, target.config.ocr_classes
    dst_rows = [s * n_dst + d for s in range(sub) for d, _ in pairs]
    src_rows = [s * n_src + c for s in range(sub) for _, c in pairs]
    return dst_rows, src_rows, new


@torch.no_grad()
def warm_start(source: MobileMultiModalLLM, target: MobileMultiModalLLM) -> WarmStart:
    """Copy ``source``'s trained weights into ``target`` (fresh, the new architecture) in place."""
    if source.tokenizer.words != target.tokenizer.words:
        raise ValueError("the word vocabularies differ: the decoder's weights would not carry over")
    src = source.network.state_dict()
    dst = target.network.state_dict()
    report = WarmStart()
    dst_rows, src_rows, report.characters_new = _ctc_rows(source, target)
    mismatched: list[str] = []
    for name, tensor in dst.items():
        if name not in src and name.startswith(SCENE_DETAIL):
            report.fresh.append(name)
            continue
        if name not in src:
            mismatched.append(f"{name} (not in the source)")
            continue
        old = src[name]
        if old.shape == tensor.shape:
            tensor.copy_(old)
            report.copied += 1
        elif (
            name == COLUMN_POSITIONS and old.shape[1:] == tensor.shape[1:] and old.shape[0] < tensor.shape[0]
        ):
            tensor[: old.shape[0]] = old
            tensor[old.shape[0] :] = old[-1]
            report.grown.append(f"{name} {old.shape[0]}->{tensor.shape[0]} rows")
        elif name in CTC_OUTPUT and old.shape[1:] == tensor.shape[1:]:
            tensor[dst_rows] = old[src_rows]
            report.characters_kept = len(dst_rows) // target.config.ocr_subframes - 1
        else:
            mismatched.append(f"{name} {tuple(old.shape)} -> {tuple(tensor.shape)}")
    if mismatched:
        raise ValueError("cannot warm-start these tensors: " + "; ".join(mismatched))
    target.network.load_state_dict(dst)
    return report
