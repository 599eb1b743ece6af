"""Every quality bar a retrained bundled model must meet, read from its eval reports.

``scripts/retrain_default.sh`` writes ``eval_<precision>.json`` (``mobile-mm eval --json``) for
fp32, int8, int4 and int2 into a reports directory; this prints each bar (the generator's
held-out splits' targets, issue 18's user-style targets at fp32 and INT2, INT2's worst-task
loss) with the measured value, and exits 1 when one is not met, so the script stops before
``--install``.

Example::

    python -m mobile_multimodal.training.retrain_summary runs/user-style-X/reports
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (task, metric, minimum): the existing bars (README) and issue 18's user-style targets
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("captioning", "cider_d", 1.5),
    ("captioning", "object_attribute_f1", 0.95),
    ("ocr", "word_accuracy", 0.90),
    ("ocr_unseen_fonts", "word_accuracy", 0.60),
    ("vqa", "accuracy", 0.95),
    ("easy_vqa", "accuracy", 0.98),
    ("retrieval", "recall_at_1", 0.90),
    ("user_captioning", "attribute_recall", 0.97),
    ("user_vqa", "accuracy", 0.97),
    ("user_ocr", "word_accuracy", 0.95),
    ("user_ocr_mixed", "word_accuracy", 0.90),
)
MAX_INT2_LOSS = 0.02
CHECKED_PRECISIONS = ("fp32", "int2")


def worst_loss(fp32: dict[str, Any], quantized: dict[str, Any]) -> tuple[str, float]:
    """(task, loss) of the task that lost most: (fp32 primary - quantized primary) / fp32 primary."""
    losses = {
        task: (entry["primary"] - quantized["tasks"][task]["primary"]) / entry["primary"]
        for task, entry in fp32["tasks"].items()
        if task in quantized["tasks"] and entry["primary"] > 0
    }
    task = max(losses, key=lambda t: losses[t])
    return task, losses[task]


def summarize(reports: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
    """(table lines, every bar met) for reports by precision."""
    lines = ["| precision | task | metric | measured | target | met |", "|---|---|---|---:|---:|:-:|"]
    ok = True
    for precision in CHECKED_PRECISIONS:
        tasks = reports[precision]["tasks"]
        for task, metric, minimum in TARGETS:
            value = tasks.get(task, {}).get(metric)
            met = value is not None and value >= minimum
            ok &= met
            shown = "missing" if value is None else f"{value:.3f}"
            lines.append(
                f"| {precision} | {task} | {metric} | {shown} | >= {minimum} | {'yes' if met else 'NO'} |"
            )
    task, loss = worst_loss(reports["fp32"], reports["int2"])
    met = loss <= MAX_INT2_LOSS
    ok &= met
    lines.append(
        f"| int2 | worst-task loss ({task}) | vs fp32 | {loss:.2%} | <= 2% | {'yes' if met else 'NO'} |"
    )
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mobile_multimodal.training.retrain_summary REPORTS_DIR", file=sys.stderr)
        return 2
    directory = Path(args[0])
    reports = {}
    for precision in CHECKED_PRECISIONS:
        path = directory / f"eval_{precision}.json"
        if not path.exists():
            print(f"{path} is missing: run mobile-mm eval --json for {precision} first", file=sys.stderr)
            return 2
        reports[precision] = json.loads(path.read_text())
    lines, ok = summarize(reports)
    print("\n".join(lines))
    print("every bar met" if ok else "NOT every bar met: do not install this model")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
