"""Load at a multiple of capacity: measure what the server sustains, then drive it open loop at
``factor`` times that for a fixed time, and check it sheds the excess cleanly.

1. warm-up, then **capacity**: k6 closed loop, ``capacity_vus`` clients (at most the queue's
   length, so none is refused) for ``capacity_s``; capacity = accepted (200) answers per second.
2. **overload**: k6 open loop (constant arrival rate: arrivals do not wait for answers) at
   ``factor`` x capacity for ``overload_s``, every client its own connection.
3. **memory**: RSS of the server process before the overload (after warm-up and capacity), its
   peak during, and after: polled until it is back within ``rss_tolerance`` of the baseline
   (bounded by ``settle_timeout_s``).

What must hold (``check``): every answer is 200, or 503/429 with Retry-After; nothing else (no
500, no 504, no connection errors); some requests were shed (it was an overload); the p99 of the
accepted requests is within the bound (:func:`latency_bound_ms`); memory came back.

Example::

    result = run_overload(url, pid, bodies, max_queue=256)
    problems = check(result)      # [] when every rule held
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.reliability.k6 import run_k6
from benchmarks.reliability.memory import RssSampler, rss_bytes, wait_rss_at_most

SHED = (429, 503)
# One VU per request in flight; 900 stays under the server's 1,024 connections (MAX_CONNECTIONS),
# past which uvicorn itself answers 503 without Retry-After.
MAX_VUS = 900


@dataclass(frozen=True)
class OverloadPlan:
    factor: float = 2.0
    capacity_s: float = 20
    capacity_vus: int = 32
    overload_s: float = 60
    warmup_s: float = 5
    rss_tolerance: float = 0.10
    settle_timeout_s: float = 120
    request_timeout_s: float = 60


def latency_bound_ms(capacity_rps: float, capacity_p99_ms: float, max_queue: int) -> float:
    """The p99 an accepted request may take at overload: twice (a full queue drained at the
    measured capacity + the p99 of a request at capacity). The queue is the only place an
    accepted request waits beyond its own batch; the factor two leaves room for the load
    generator and the rejected requests sharing the CPU with the server."""
    return 2 * (max_queue / capacity_rps * 1000 + capacity_p99_ms)


def run_overload(
    url: str, pid: int, bodies: list[dict[str, Any]], max_queue: int, plan: OverloadPlan | None = None
) -> dict[str, Any]:
    plan = plan or OverloadPlan()
    run_k6(url, bodies, mode="closed", vus=8, duration_s=plan.warmup_s)
    clients = min(plan.capacity_vus, max_queue)
    capacity = run_k6(url, bodies, mode="closed", vus=clients, duration_s=plan.capacity_s)
    rss_base = rss_bytes(pid)
    rate = max(1, math.ceil(plan.factor * capacity.accepted_rps))
    bound_ms = latency_bound_ms(capacity.accepted_rps, capacity.accepted_ms["p99"], max_queue)
    # a client per arrival for as long as an accepted request may take (half the bound: the
    # factor two is slack), so arrivals are not held back for want of a free client
    vus = min(MAX_VUS, max(50, math.ceil(rate * max(3.0, bound_ms / 2000))))
    with RssSampler(pid, interval_s=0.5) as sampler:
        overload = run_k6(
            url,
            bodies,
            mode="open",
            rate=rate,
            duration_s=plan.overload_s,
            vus=vus,
            max_vus=vus,
            request_timeout_s=plan.request_timeout_s,
        )
    limit = int(rss_base * (1 + plan.rss_tolerance))
    settled, rss_after = wait_rss_at_most(pid, limit, plan.settle_timeout_s)
    return {
        "plan": plan.__dict__,
        "max_queue": max_queue,
        "capacity": {**capacity.to_dict(), "clients": clients},
        "offered_rps": rate,
        "vus": vus,
        "overload": overload.to_dict(),
        "p99_bound_ms": bound_ms,
        "rss_bytes": {
            "baseline": rss_base,
            "peak": sampler.peak,
            "after": rss_after,
            "limit": limit,
            "settled": settled,
        },
        "rss_samples": sampler.samples,
    }


def check(result: dict[str, Any], *, latency_bound: bool = True) -> list[str]:
    """The rules of the module docstring; each broken one as a sentence."""
    problems = []
    statuses = {int(k): v for k, v in result["overload"]["statuses"].items()}
    unexpected = {s: n for s, n in statuses.items() if s != 200 and s not in SHED}
    if unexpected:
        problems.append(f"answers other than 200/429/503 (0 = connection error): {unexpected}")
    if result["overload"]["retry_after_missing"]:
        problems.append(f"{result['overload']['retry_after_missing']} 429/503 answers without Retry-After")
    if not any(statuses.get(s, 0) for s in SHED):
        problems.append(f"nothing was shed at {result['offered_rps']} req/s: not an overload ({statuses})")
    if not statuses.get(200):
        problems.append("no request was accepted during the overload")
    p99, bound = result["overload"]["accepted_ms"]["p99"], result["p99_bound_ms"]
    if latency_bound and p99 > bound:
        problems.append(f"p99 of accepted requests {p99:.0f} ms is over the bound {bound:.0f} ms")
    rss = result["rss_bytes"]
    if not rss["settled"]:
        problems.append(
            f"resident memory did not come back: {rss['after'] / 2**20:.0f} MiB after, "
            f"baseline {rss['baseline'] / 2**20:.0f} MiB (limit {rss['limit'] / 2**20:.0f} MiB)"
        )
    return problems
