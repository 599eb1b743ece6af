"""The deployment-wide rate limiter against a real Redis: shared, atomic, and what happens when it is down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tests.integration.redis_server import RedisServer, available

from mobile_multimodal.observability import metrics
from mobile_multimodal.security import Principal, create_key, install_security, require_api_key
from mobile_multimodal.security.ratelimit import RateLimit, RateLimiter
from mobile_multimodal.security.redis_ratelimit import RedisRateLimiter, build_rate_limiter
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database

# 0.6 a minute: no token comes back during a test, so every count below is exact.
SLOW = {"free": RateLimit(per_minute=0.6, burst=5), "pro": RateLimit(per_minute=60, burst=1)}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if (why := available()) is not None:
        pytest.fail(why)
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _limiter(
    server: RedisServer, clock: Callable[[], float] = time.monotonic, retry_after_s: float = 5.0
) -> RedisRateLimiter:
    """One instance's limiter: its own client and connection pool."""
    client = redis.Redis.from_url(server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    return RedisRateLimiter(SLOW, client, clock=clock, retry_after_s=retry_after_s)


def test_two_instances_share_one_bucket(redis_server: RedisServer) -> None:
    a, b = _limiter(redis_server), _limiter(redis_server)
    waits = [limiter.acquire("k_shared", "free") for limiter in (a, b) * 5]
    # burst 5 across both "instances", not 5 each
    assert waits[:5] == [0.0] * 5
    assert all(w > 90 for w in waits[5:]), waits  # 1 token per 100 s: about 100 s to wait
    assert a.acquire("k_other", "free") == 0.0  # keys are independent


def test_the_take_is_atomic_under_concurrency(redis_server: RedisServer) -> None:
    limiters = [_limiter(redis_server) for _ in range(4)]  # four clients, four connection pools
    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = list(pool.map(lambda i: limiters[i % 4].acquire("k_race", "free"), range(40)))
    assert waits.count(0.0) == 5, waits


def test_retry_after_comes_from_the_shared_bucket(redis_server: RedisServer) -> None:
    limiter = _limiter(redis_server)
    assert limiter.acquire("k_pro", "pro") == 0.0
    assert limiter.acquire("k_pro", "pro") == pytest.approx(1.0, abs=0.2)  # 1 token/s, just emptied
    with pytest.raises(ValueError, match="no rate limit configured"):
        limiter.acquire("k_pro", "gold")


def test_redis_down_falls_back_to_local_buckets_then_recovers(tmp_path: Path) -> None:
    clock = Clock()
    server = RedisServer(tmp_path / "redis").start()
    try:
        limiter = _limiter(server, clock=clock, retry_after_s=5.0)
        assert limiter.acquire("k_down", "free") == 0.0  # one token taken in Redis
        server.stop()
        before = metrics.RATE_LIMIT_BACKEND_ERRORS._value.get()
        # No exception, no unmetered pass: this process's own bucket (burst 5) decides.
        waits = [limiter.acquire("k_down", "free") for _ in range(7)]
        assert waits[:5] == [0.0] * 5 and all(w > 0 for w in waits[5:]), waits
        assert metrics.RATE_LIMIT_BACKEND_ERRORS._value.get() - before == 7
        # Back up on the same port: used again once the retry interval has passed.
        server = RedisServer(tmp_path / "redis", port=server.port).start()
        clock.t += 6
        assert limiter.acquire("k_down", "free") == 0.0  # a new server: a full bucket
        assert metrics.RATE_LIMIT_BACKEND_ERRORS._value.get() - before == 7
    finally:
        server.stop()


def test_build_rate_limiter_follows_the_settings(redis_server: RedisServer) -> None:
    local = build_rate_limiter(Settings())
    assert type(local) is RateLimiter
    shared = build_rate_limiter(Settings(redis_url=redis_server.url, rate_limit_free_burst=3))
    assert isinstance(shared, RedisRateLimiter) and shared.limits["free"] == RateLimit(60.0, 3)


def test_several_replicas_refuse_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="MOBILE_MM_REPLICAS=3 needs a database every replica shares"):
        Settings(replicas=3, data_dir=tmp_path)
    with pytest.raises(ValidationError, match="SQLite"):
        Settings(replicas=2, database_url=f"sqlite:///{tmp_path}/x.db")
    assert Settings(replicas=3, database_url="postgresql+psycopg://u@db/mm").replicas == 3
    assert Settings(workers=4, data_dir=tmp_path).workers == 4  # one machine may share its SQLite


def test_an_unreachable_redis_is_never_a_500(db: Database, tmp_path: Path) -> None:
    """The HTTP boundary with MOBILE_MM_REDIS_URL pointing nowhere: the local buckets answer."""
    key, _ = create_key(db, "redis-down", "free")
    nowhere = RedisServer(tmp_path / "never-started")  # a free port nobody listens on
    app = FastAPI()
    settings = Settings(
        auth="required", redis_url=nowhere.url, rate_limit_free_burst=2, rate_limit_free_per_minute=0.06
    )
    install_security(app, settings, db)

    @app.get("/whoami")
    def whoami(principal: Principal = Depends(require_api_key)) -> dict[str, str]:
        return {"user_id": principal.user_id}

    client = TestClient(app)
    before = metrics.RATE_LIMIT_BACKEND_ERRORS._value.get()
    codes = [client.get("/whoami", headers={"X-API-Key": key}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert metrics.RATE_LIMIT_BACKEND_ERRORS._value.get() - before == 3
