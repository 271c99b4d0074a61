"""Open the replicas' shared Redis: the one place the optional `redis` client is imported."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

INSTALL_HINT = "pip install atom-mesh[redis]"


class RedisClientMissing(ImportError):
    """`--redis-url` was given but the `redis` package is not installed."""


def open_redis(url: str) -> Redis:
    """A client for `url` (redis://, rediss://, unix://). Connections open lazily, on the
    first command, so this works before the event loop runs and never blocks."""
    try:
        from redis.asyncio import Redis
    except ImportError as exc:
        raise RedisClientMissing(f"--redis-url needs the redis client: {INSTALL_HINT}") from exc
    # Short timeouts: a Redis that stops answering must cost a request milliseconds, not
    # seconds, before the caller falls back (rate limit) or drops the message (tree sync).
    client: Redis = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30)
    return client
