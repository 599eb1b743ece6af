"""The serving report's comparison with the serving frameworks (issue 20's targets) and its
correctness table.

Against the best framework peer for each measure (the most requests per second at c=32; the
lowest p99 at c=32; the lowest p50 at c=1), from the same run: throughput at c=32 at least
``THROUGHPUT_TARGET`` times, p99 at c=32 below, p50 at c=1 no worse. A peer that completed no
request in a cell has no latency there and is left out of that cell's latency bests (its
throughput of 0 still counts). The headline is the mix, the task a service sees.

Example::

    versus_frameworks(result["precisions"]["int2"], ["litserve", "bentoml"], "mix")
    # {"throughput_c32": {"peer": "litserve", "ours": 80.0, "peer_value": 50.0, "ratio": 1.6,
    #                     "met": True}, "p99_c32": {...}, "p50_c1": {...}}
"""

from __future__ import annotations

from typing import Any

THROUGHPUT_TARGET = 1.5
# (summary key, server) for each server of ours compared with the frameworks: the default first
VARIANTS = (
    ("vs_frameworks", "ours"),
    ("vs_frameworks_continuous", "ours_continuous"),
    ("vs_frameworks_onnxruntime", "ours_onnxruntime"),
    ("vs_frameworks_onnxruntime_continuous", "ours_onnxruntime_continuous"),
    ("vs_frameworks_onnxruntime_float", "ours_onnxruntime_float"),
)


def _cell(per: dict[str, Any], server: str, task: str, c: int) -> dict[str, float]:
    cell: dict[str, float] = per["servers"][server]["tasks"][task][str(c)]["median"]
    return cell


def _compare(
    per: dict[str, Any], peers: list[str], task: str, c: int, metric: str, higher_wins: bool, ours_name: str
) -> dict[str, Any]:
    ours = _cell(per, ours_name, task, c)[metric]
    # a latency exists only where requests completed
    candidates = list(peers) if higher_wins else [p for p in peers if _cell(per, p, task, c)["rps"] > 0]
    if not candidates:
        return {"peer": None, "ours": ours, "peer_value": None, "ratio": None, "met": None}
    values = {p: _cell(per, p, task, c)[metric] for p in candidates}
    best = max(candidates, key=values.__getitem__) if higher_wins else min(candidates, key=values.__getitem__)
    theirs = values[best]
    ratio = ours / theirs if theirs else None
    if higher_wins:
        met = ratio is not None and ratio >= THROUGHPUT_TARGET if theirs else ours > 0
    elif metric == "p99_ms":
        met = ours < theirs
    else:
        met = ours <= theirs
    return {"peer": best, "ours": ours, "peer_value": theirs, "ratio": ratio, "met": met}


def versus_frameworks(
    per: dict[str, Any], peers: list[str], task: str, ours: str = "ours"
) -> dict[str, Any] | None:
    """``ours`` (a server of ours: the default ``ours``, or ``ours_continuous``) against the best
    framework peer per measure, for ``task`` (None: no framework peer)."""
    if not peers:
        return None
    return {
        "throughput_c32": _compare(per, peers, task, 32, "rps", True, ours),
        "p99_c32": _compare(per, peers, task, 32, "p99_ms", False, ours),
        "p50_c1": _compare(per, peers, task, 1, "p50_ms", False, ours),
    }


def _ok(value: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "n/a"}[value]


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> list[str]:
    """The frameworks table and the correctness table, for results.md."""
    frameworks = result["options"].get("framework_peers", [])
    lines: list[str] = []
    if frameworks:
        lines += [
            "## Ours against the best framework peer (issue 20; same run)",
            "",
            f"Framework peers: {', '.join(f'`{p}`' for p in frameworks)}. Each row takes the best peer "
            f"for that measure. Targets: throughput at c=32 >= {THROUGHPUT_TARGET}x, p99 at c=32 below, "
            "p50 at c=1 no worse. The mix is the headline.",
            "",
            "`ours` is the default (static batching, PyTorch); `ours_continuous` the same server with "
            "`MOBILE_MM_BATCHING=continuous`; `ours_onnxruntime` the same server on the ONNX export "
            "bundle (`MOBILE_MM_RUNTIME=onnxruntime`, a batch decoded together, two batches at once); "
            "`ours_onnxruntime_continuous` that server with `MOBILE_MM_BATCHING=continuous`; "
            "`ours_onnxruntime_float` that server with a quantized bundle's weights as float MatMuls "
            "(`MOBILE_MM_ONNX_WEIGHTS=float`, quantized precisions only); where measured.",
            "",
            "| precision | task | server | measure | ours | best peer | peer | ours / peer | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        labels = {"throughput_c32": "req/s at c=32", "p99_c32": "p99 ms at c=32", "p50_c1": "p50 ms at c=1"}
        for q, s in result["summary"].items():
            for key, server in VARIANTS:
                for task, by_measure in s.get(key, {}).items():
                    for measure, r in by_measure.items():
                        lines.append(
                            f"| {q} | {task} | `{server}` | {labels[measure]} | {_num(r['ours'], '.2f')} | "
                            f"{r['peer'] or 'n/a'} | {_num(r['peer_value'], '.2f')} | "
                            f"**{_num(r['ratio'], '.2f')}** | {_ok(r['met'])} |"
                        )
    if not any("correctness" in per for per in result["precisions"].values()):
        return lines  # a run from before the check
    lines += [
        *([""] if lines else []),
        "## Correctness: the mix's answers, every server against the model in-process",
        "",
        "Each server answered the mix's requests (16 at a time: batching in the path); `identical` = "
        "every answer equals the model's own, computed in-process one request at a time. Accuracy: "
        "exact match with the data generator's reference answers.",
        "",
        "| precision | server | identical | differing | accuracy (all) | short captions | long captions "
        "| vqa | ocr |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q, per in result["precisions"].items():
        check = per.get("correctness")
        if check is None:
            continue
        rows = [("in-process reference", None, check["reference_accuracy"])]
        rows += [(name, s, s["accuracy"]) for name, s in check["servers"].items()]
        for name, s, acc in rows:
            differing = "-" if s is None else f"{len(s['mismatches'])} / {check['requests']}"
            same = "-" if s is None else _ok(s["identical"])
            lines.append(
                f"| {q} | {name} | {same} | {differing} | {acc['all']:.2f} | "
                + " | ".join(
                    f"{acc[k]:.2f}" if k in acc else "-"
                    for k in ("caption_short", "caption_long", "vqa", "ocr")
                )
                + " |"
            )
    return lines
