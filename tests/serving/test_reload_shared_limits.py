"""A live rate-limit change (SIGHUP's reload) keeps the limits deployment-wide with ``MOBILE_MM_REDIS_URL``.

The reload rebuilds the limiter with the new limits; it must build the one the settings ask for
(Redis-backed), not this process's local buckets, or each replica and worker would silently
enforce the limit on its own share of the traffic after the first reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis
from tests.integration.redis_server import RedisServer, available

from mobile_multimodal.security.ratelimit import RateLimit
from mobile_multimodal.security.redis_ratelimit import RedisRateLimiter
from mobile_multimodal.serving.reload import ReloadOutcome
from mobile_multimodal.settings import Settings

from .conftest import LiveServer


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if (why := available()) is not None:
        pytest.fail(why)
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _reload(server: LiveServer, settings: Settings) -> ReloadOutcome:
    reloader = server.app.state.reloader
    reloader.settings_loader = lambda: settings
    future = asyncio.run_coroutine_threadsafe(reloader.reload(), server.app.state.duties.loop)
    outcome: ReloadOutcome = future.result(timeout=300)
    return outcome


def test_a_reloaded_rate_limit_stays_shared_through_redis(
    live_server: Callable[..., LiveServer], redis_server: RedisServer
) -> None:
    server = live_server(redis_url=redis_server.url)
    security = server.app.state.security
    assert isinstance(security.limiter, RedisRateLimiter)
    settings: Settings = server.app.state.settings
    # one token per 100 s: nothing refills during the test
    changed = settings.model_copy(update={"rate_limit_free_burst": 2, "rate_limit_free_per_minute": 0.6})
    outcome = _reload(server, changed)
    assert outcome.ok and {"rate_limit_free_burst", "rate_limit_free_per_minute"} <= set(outcome.applied)
    limiter = security.limiter
    assert isinstance(limiter, RedisRateLimiter), type(limiter)
    assert limiter.limits["free"] == RateLimit(per_minute=0.6, burst=2)
    # another replica's limiter on the same Redis shares the key's bucket with this one
    other = RedisRateLimiter(
        {"free": RateLimit(per_minute=0.6, burst=2)},
        redis.Redis.from_url(redis_server.url, socket_timeout=2.0, socket_connect_timeout=2.0),
    )
    assert limiter.acquire("k_reloaded", "free") == 0.0
    assert other.acquire("k_reloaded", "free") == 0.0
    assert limiter.acquire("k_reloaded", "free") > 90  # the shared burst of 2 is spent
