"""Soak: many requests through one server; its resident memory must not keep growing.

After ``warmup`` requests (allocator pools, lazily built paths, caches at their working size),
the server's RSS is the baseline; then ``requests`` more go through k6 (closed loop, ``vus``
clients) with a mix of every task and some bad requests (refused with a 4xx: the error path
must not leak either), while the RSS is sampled. Growth = final RSS / baseline - 1.

Example::

    result = run_soak(url, pid, requests=20_000)
    result["growth"] < 0.05
"""

from __future__ import annotations

from typing import Any

from benchmarks.reliability.k6 import run_k6
from benchmarks.reliability.memory import RssSampler, rss_bytes
from benchmarks.serving.workload import task_body

# Refused before the model runs: bad base64 (400), a VQA without its question (422).
BAD_BODIES: list[dict[str, Any]] = [
    {"image": "not base64 at all!", "task": "captioning"},
    {"image": task_body("captioning")["image"], "task": "vqa"},
]


def soak_bodies(max_tokens: int | None = None) -> list[dict[str, Any]]:
    """Every task (retrieval with texts and without), then the bad requests: 8 bodies, 2 refused."""
    good = [task_body(t, max_tokens) for t in ("captioning", "ocr", "vqa", "retrieval")]
    embedding = {k: v for k, v in task_body("retrieval").items() if k != "texts"}
    return [*good, embedding, task_body("captioning", max_tokens), *BAD_BODIES]


def expected_refusals(bodies: list[dict[str, Any]], requests: int) -> int:
    """How many of ``requests`` (sent in order, cycling) are bad bodies."""
    bad = {i for i, b in enumerate(bodies) if b in BAD_BODIES}
    return sum(1 for i in range(requests) if i % len(bodies) in bad)


def run_soak(
    url: str,
    pid: int,
    *,
    requests: int,
    warmup: int = 1000,
    vus: int = 8,
    max_tokens: int | None = None,
    limit_s: float = 3600,
) -> dict[str, Any]:
    bodies = soak_bodies(max_tokens)
    run_k6(url, bodies, mode="iterations", vus=vus, iterations=warmup, limit_s=limit_s)
    baseline = rss_bytes(pid)
    with RssSampler(pid, interval_s=1.0) as sampler:
        run = run_k6(url, bodies, mode="iterations", vus=vus, iterations=requests, limit_s=limit_s)
    final = rss_bytes(pid)
    return {
        "requests": requests,
        "warmup": warmup,
        "vus": vus,
        "run": run.to_dict(),
        "expected_refusals": expected_refusals(bodies, requests),
        "rss_bytes": {"baseline": baseline, "final": final, "peak": sampler.peak},
        "growth": final / baseline - 1,
        "rss_samples": sampler.samples,
    }


def check(result: dict[str, Any], max_growth: float) -> list[str]:
    statuses = {int(k): v for k, v in result["run"]["statuses"].items()}
    problems = []
    refused = sum(n for s, n in statuses.items() if 400 <= s < 500)
    if statuses.get(200, 0) + refused != result["requests"] or refused != result["expected_refusals"]:
        problems.append(
            f"answers {statuses}: expected {result['requests'] - result['expected_refusals']} x 200 "
            f"and {result['expected_refusals']} x 4xx"
        )
    if result["growth"] >= max_growth:
        rss = result["rss_bytes"]
        problems.append(
            f"resident memory grew {result['growth']:.1%} (limit {max_growth:.0%}): "
            f"{rss['baseline'] / 2**20:.1f} -> {rss['final'] / 2**20:.1f} MiB"
        )
    return problems
