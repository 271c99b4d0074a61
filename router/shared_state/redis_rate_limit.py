"""The global rate limit as one token bucket in Redis, shared by every router replica.

Why a script: take-a-token must be one atomic read-modify-write across replicas, and the
refill must use one clock; the Lua script runs atomically in Redis and reads Redis's own
`TIME`, so replicas' clock skew does not matter. One round trip per request.

On a Redis error the replica falls back to its own local bucket at the same rate (and logs
a warning once per outage): serving goes on, each replica still bounded by the limit, the
fleet by replicas x limit until Redis answers again. Refusing every request because an
optional auxiliary is down would turn a Redis outage into a full outage; admitting without
any limit would drop the protection the limit exists for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from router.admission import RateLimiter, bucket_capacity

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("atom_mesh.shared_state")

# KEYS[1]: the bucket hash; ARGV: rate (tokens/s), capacity. Returns the wait in seconds
# as a string (a Lua number would come back truncated to an integer).
_TAKE_TOKEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """`RateLimiter` over a bucket in Redis at `key`; `fallback` while Redis fails."""

    def __init__(self, redis: Redis, key: str, rate: float, fallback: RateLimiter) -> None:
        if rate <= 0:
            raise ValueError("the shared rate limit needs --rate-limit-tokens-per-second > 0")
        self._redis = redis
        self._key = key
        self._args = (repr(float(rate)), repr(bucket_capacity(rate)))
        self._script = redis.register_script(_TAKE_TOKEN)
        self._fallback = fallback
        self.degraded = False  # True while Redis is failing (the metric and the log follow it)
        self.failures = 0

    async def try_take(self) -> float:
        try:
            wait = float(await self._script(keys=[self._key], args=list(self._args)))
        except Exception as exc:  # any client error: connection, timeout, script, protocol
            self.failures += 1
            if not self.degraded:
                self.degraded = True
                logger.warning(
                    "shared rate limit unavailable; this replica enforces the limit alone until Redis answers",
                    extra={"redis_key": self._key, "error": f"{type(exc).__name__}: {exc}"},
                )
            return await self._fallback.try_take()
        if self.degraded:
            self.degraded = False
            logger.warning("shared rate limit back on Redis", extra={"redis_key": self._key})
        return wait
