"""What one router replica shares through Redis, built from `SharedStateConfig`.

The app makes one at start-up (`from_config`; None without `--redis-url`), passes its
`rate_limiter` to admission, hands it the planner's pools (`share_trees`), and starts and
closes it with its lifespan. Keys and channels are named here, from `redis_key_prefix`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.admission import LocalRateLimiter, RateLimiter
from router.config import RouterConfig
from router.placement.planner import Planner
from router.shared_state.redis_connection import open_redis
from router.shared_state.redis_rate_limit import RedisRateLimiter
from router.shared_state.redis_tree_sync import RedisTreeSync
from router.workers.registry import WorkerRegistry
from router.workers.worker import Role

if TYPE_CHECKING:
    from redis.asyncio import Redis


class ReplicaState:
    """The Redis client, the shared rate limit (if one is set) and the tree sync (if any
    pool is cache_aware)."""

    def __init__(self, redis: Redis, config: RouterConfig) -> None:
        self.redis = redis
        self._config = config
        prefix = config.shared_state.redis_key_prefix
        rate = config.admission.rate_limit_tokens_per_second
        self.rate_limiter: RateLimiter | None = (
            RedisRateLimiter(redis, f"{prefix}:rate-limit", rate, fallback=LocalRateLimiter(rate)) if rate else None
        )
        self.tree_sync: RedisTreeSync | None = None

    @classmethod
    def from_config(cls, config: RouterConfig) -> ReplicaState | None:
        url = config.shared_state.redis_url
        return cls(open_redis(url), config) if url else None

    def share_trees(self, registry: WorkerRegistry, planner: Planner, *, tokenized: bool) -> None:
        """Share the decisions of every cache_aware pool of `planner`."""
        pools = RedisTreeSync.cache_aware_pools((role, planner.policy(role)) for role in Role)
        if pools:
            shared = self._config.shared_state
            self.tree_sync = RedisTreeSync(
                self.redis,
                f"{shared.redis_key_prefix}:cache-aware-decisions",
                registry,
                pools,
                max_key_length=shared.tree_sync_max_key_length,
                tokenized=tokenized,
            )

    def start(self) -> None:
        if self.tree_sync is not None:
            self.tree_sync.start()

    async def close(self) -> None:
        if self.tree_sync is not None:
            await self.tree_sync.stop()
        await self.redis.aclose()
