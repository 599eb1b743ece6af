"""Per-key rate limits: one token bucket per API key, sized by the key's tier.

A bucket holds up to ``burst`` tokens and refills at ``per_minute / 60`` tokens a second; each
request takes one. An empty bucket answers with the seconds until the next token, which the
auth dependency turns into ``429`` + ``Retry-After``. Buckets live in process memory: with
``--workers N`` each worker enforces the limit on its own share of the traffic.

Example::

    limiter = RateLimiter({"free": RateLimit(60, 10), "pro": RateLimit(600, 50)})
    wait_s = limiter.acquire("k_1a2b", "free")    # 0.0 = allowed, else seconds to wait
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mobile_multimodal.settings import Settings


@dataclass(frozen=True)
class RateLimit:
    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ValueError(f"rate limit needs per_minute > 0 and burst >= 1, got {self}")


class TokenBucket:
    """Tokens refill continuously; ``take`` is O(1) and needs no background timer."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.capacity = float(limit.burst)
        self.rate = limit.per_minute / 60.0  # tokens per second
        self.tokens = self.capacity
        self.updated = now

    def take(self, now: float) -> float:
        """Take one token: returns 0.0 if granted, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Thread-safe map of key id -> bucket (sync FastAPI dependencies run in a thread pool)."""

    def __init__(self, limits: Mapping[str, RateLimit], clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(limits)
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            {
                "free": RateLimit(settings.rate_limit_free_per_minute, settings.rate_limit_free_burst),
                "pro": RateLimit(settings.rate_limit_pro_per_minute, settings.rate_limit_pro_burst),
            }
        )

    def acquire(self, key_id: str, tier: str) -> float:
        """0.0 if the request may proceed, else seconds until the key may try again."""
        limit = self.limits.get(tier)
        if limit is None:
            raise ValueError(f"no rate limit configured for tier {tier!r}")
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key_id)
            if bucket is None or bucket.capacity != limit.burst:
                bucket = self._buckets[key_id] = TokenBucket(limit, now)
            return bucket.take(now)
