"""Shared fixtures: a real redis-server per test session, uvicorn servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from gateway.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the shared test redis-server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def stack(redis_url: str):  # type: ignore[no-untyped-def]
    """Two simulated engines (time-scale 0.02) behind one gateway, over the test Redis."""
    from gateway.testing import start_stack

    s = start_stack(redis_url, engines=2, time_scale=0.02)
    yield s
    s.stop()
