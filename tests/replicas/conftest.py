"""Fixtures for router replicas: a throwaway redis-server per test, skipped where missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.redis_server import RedisServer, redis_server_binary, start_redis


def require_redis() -> None:
    """Skip unless both the server (Debian redis-server) and the client (extra `redis`) are here."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client is not installed: pip install atom-mesh[redis]")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
