"""Token bucket arithmetic with a controlled clock."""

from __future__ import annotations

import pytest

from mobile_multimodal.security.ratelimit import RateLimit, RateLimiter
from mobile_multimodal.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter({"free": RateLimit(per_minute=60, burst=3)}, clock=clock)
    assert [limiter.acquire("k", "free") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k", "free") == pytest.approx(1.0)  # 1 token/s, bucket empty
    clock.t += 0.5
    assert limiter.acquire("k", "free") == pytest.approx(0.5)
    clock.t += 0.5
    assert limiter.acquire("k", "free") == 0.0
    clock.t += 100  # refill never exceeds the burst
    assert [limiter.acquire("k", "free") for _ in range(4)][-1] > 0


def test_keys_and_tiers_are_independent() -> None:
    clock = Clock()
    limiter = RateLimiter({"free": RateLimit(6, 1), "pro": RateLimit(600, 2)}, clock=clock)
    assert limiter.acquire("a", "free") == 0.0
    assert limiter.acquire("a", "free") == pytest.approx(10.0)
    assert limiter.acquire("b", "free") == 0.0
    assert limiter.acquire("c", "pro") == 0.0 and limiter.acquire("c", "pro") == 0.0
    assert limiter.acquire("c", "pro") == pytest.approx(0.1)


def test_from_settings_and_validation() -> None:
    limiter = RateLimiter.from_settings(Settings(rate_limit_pro_burst=7))
    assert limiter.limits["pro"] == RateLimit(600.0, 7)
    with pytest.raises(ValueError, match="no rate limit configured"):
        limiter.acquire("k", "gold")
    with pytest.raises(ValueError):
        RateLimit(0, 1)
