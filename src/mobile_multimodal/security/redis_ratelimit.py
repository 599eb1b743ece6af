"""Per-key rate limits shared by every replica and worker: the token bucket kept in Redis.

With ``MOBILE_MM_REDIS_URL`` set, each key's bucket is one Redis hash (``tokens``, ``ts``)
updated by a Lua script, so the refill-and-take is atomic however many processes ask at once,
and the refill uses Redis's own clock (``TIME``), not each pod's. The arithmetic is the local
:class:`~mobile_multimodal.security.ratelimit.TokenBucket`'s: a key gets ``burst`` requests at
once and ``per_minute`` a minute across the whole deployment. A bucket that has refilled to full
expires (``PEXPIRE``), so idle keys cost Redis nothing.

When Redis does not answer (down, unreachable, slower than ``MOBILE_MM_REDIS_TIMEOUT_S``) the
request is not failed and not let through unmetered: this process's local bucket decides, so
each instance enforces the limit on its own share of the traffic until Redis is back (the
deployment-wide limit is then at most ``replicas x workers`` times the configured one).
``rate_limit_backend_errors_total`` counts those requests, and one warning is logged per outage.
After a failure Redis is tried again after ``retry_after_s``, so an outage does not add a
connect timeout to every request.

Example::

    limiter = build_rate_limiter(settings)          # Redis-backed when MOBILE_MM_REDIS_URL is set
    wait_s = limiter.acquire("k_1a2b", "free")      # 0.0 = allowed, else seconds to wait
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from mobile_multimodal.observability import metrics
from mobile_multimodal.security.ratelimit import RateLimit, RateLimiter
from mobile_multimodal.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "mobile-mm:ratelimit:"

# KEYS[1]: the bucket; ARGV: capacity, refill rate (tokens/s), expiry (ms). Returns the wait in
# seconds as a string (Lua numbers returned to Redis are truncated to integers).
TOKEN_BUCKET_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'capacity')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or tonumber(state[3]) ~= capacity then
  tokens = capacity
  updated = now
end
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now), 'capacity', tostring(capacity))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""


class RedisRateLimiter(RateLimiter):
    """The deployment-wide limiter; falls back to the inherited local buckets when Redis fails."""

    def __init__(
        self,
        limits: Mapping[str, RateLimit],
        client: Any,
        *,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits, clock=clock)
        self.client = client
        self.retry_after_s = retry_after_s
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._down_until = 0.0
        self._down_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, limits: Mapping[str, RateLimit], timeout_s: float) -> RedisRateLimiter:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(limits, client)

    def acquire(self, key_id: str, tier: str) -> float:
        limit = self.limits.get(tier)
        if limit is None:
            raise ValueError(f"no rate limit configured for tier {tier!r}")
        if self.clock() < self._down_until:
            return self._local(key_id, tier)
        capacity, rate = float(limit.burst), limit.per_minute / 60.0
        # Long enough for an empty bucket to refill completely; after that it is as good as new.
        expiry_ms = math.ceil(capacity / rate * 1000) + 1000
        try:
            wait = float(self._script(keys=[KEY_PREFIX + key_id], args=[capacity, rate, expiry_ms]))
        except redis.RedisError as exc:
            self._mark_down(exc)
            return self._local(key_id, tier)
        if self._down_until:
            with self._down_lock:
                if self._down_until:
                    self._down_until = 0.0
                    log.warning("rate-limit backend Redis answers again: limits are deployment-wide again")
        return wait

    def _local(self, key_id: str, tier: str) -> float:
        metrics.RATE_LIMIT_BACKEND_ERRORS.inc()
        return super().acquire(key_id, tier)

    def _mark_down(self, exc: Exception) -> None:
        with self._down_lock:
            first = self._down_until == 0.0
            self._down_until = self.clock() + self.retry_after_s
        if first:
            log.warning(
                "rate-limit backend Redis failed (%s): each instance enforces limits on its own "
                "until it answers (retried every %.0f s)",
                exc,
                self.retry_after_s,
            )


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """The limiter the settings ask for: Redis-backed with ``MOBILE_MM_REDIS_URL``, else local."""
    local = RateLimiter.from_settings(settings)
    if not settings.redis_url:
        return local
    return RedisRateLimiter.from_url(settings.redis_url, local.limits, settings.redis_timeout_s)
