"""The serving benchmark's correctness check: every server's answers to the mix, compared.

Each server answers the same fixed requests (``workload.mix_items()``: short and long captions,
VQA, OCR), sent 16 at a time so that its batching is in the path; the answers are compared
with the model's own, computed in-process one request at a time (no batching, no server), and
scored against the data generator's reference answers (exact match). A server whose answers
differ from the in-process ones is changing what the model says; a faster server that does so
is not a peer.

Example::

    reference = reference_answers(model, mix_items())
    answers = collect_answers("http://127.0.0.1:8080", mix_items())   # {"answers", "errors"}
    check(reference, {"ours": answers}, mix_items())
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from benchmarks.serving.workload import MixItem, answer_of

CHECK_CONCURRENCY = 16
CHECK_TIMEOUT_S = 120  # per request, bounded: a busy machine answers a batch of 16 slowly


def reference_answers(model: Any, items: Sequence[MixItem]) -> list[str]:
    """The model's answers in this process, one request at a time, with the API's defaults."""
    from benchmarks.peers.batched_model import parse_request, run_batch

    out = []
    for item in items:
        response = run_batch(model, [parse_request(item.body)])[0]
        out.append(answer_of(item.task, response))
    return out


def collect_answers(url: str, items: Sequence[MixItem]) -> dict[str, Any]:
    """Each item's answer from the server at ``url`` (None where it failed, with the error)."""

    def ask(item: MixItem) -> tuple[str | None, str | None]:
        try:
            response = httpx.post(url + "/inference", json=item.body, timeout=CHECK_TIMEOUT_S)
            if response.status_code != 200:
                return None, f"HTTP {response.status_code}: {response.text[:200]}"
            return answer_of(item.task, response.json()), None
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(CHECK_CONCURRENCY) as pool:
        results = list(pool.map(ask, items))
    return {"answers": [a for a, _ in results], "errors": [e for _, e in results]}


def accuracy(answers: Sequence[str | None], items: Sequence[MixItem]) -> dict[str, float]:
    """Exact-match accuracy against the generator's references, per kind and overall."""
    by_kind: dict[str, list[bool]] = {}
    for answer, item in zip(answers, items, strict=True):
        by_kind.setdefault(item.kind, []).append(answer == item.expected)
    out = {kind: sum(hits) / len(hits) for kind, hits in by_kind.items()}
    out["all"] = sum(sum(h) for h in by_kind.values()) / len(items)
    return out


def check(
    reference: Sequence[str], by_server: dict[str, dict[str, Any]], items: Sequence[MixItem]
) -> dict[str, Any]:
    """Per server: identical to the in-process answers (every item), the items that differ, and
    the accuracy; ``all_identical`` over every server."""
    servers: dict[str, Any] = {}
    for name, got in by_server.items():
        mismatches = [
            {"index": i, "kind": item.kind, "reference": ref, "answer": ans, "error": err}
            for i, (item, ref, ans, err) in enumerate(
                zip(items, reference, got["answers"], got["errors"], strict=True)
            )
            if ans != ref
        ]
        servers[name] = {
            "identical": not mismatches,
            "mismatches": mismatches,
            "accuracy": accuracy(got["answers"], items),
        }
    return {
        "requests": len(items),
        "reference_accuracy": accuracy(list(reference), items),
        "all_identical": all(s["identical"] for s in servers.values()),
        "servers": servers,
    }
