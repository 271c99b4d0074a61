"""The shared state against a real redis-server: one token bucket for every replica, a
local fallback while Redis is down, and cache_aware decisions crossing between replicas."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.admission import LocalRateLimiter
from router.config import PolicyConfig
from router.placement.types import RequestDescriptor
from router.policies.cache_aware import CacheAwarePolicy
from router.shared_state.redis_connection import open_redis
from router.shared_state.redis_rate_limit import RedisRateLimiter
from router.shared_state.redis_tree_sync import RedisTreeSync
from router.workers.registry import WorkerRegistry
from router.workers.worker import Role, Worker
from testbed.redis_server import RedisServer


async def test_two_replicas_draw_from_one_bucket(redis_server: RedisServer):
    rate = 0.01  # capacity 1 token, the next one due in 100 s: no refill during the test
    clients = [open_redis(redis_server.url) for _ in range(2)]
    try:
        limiters = [RedisRateLimiter(c, "t:rate-limit", rate, fallback=LocalRateLimiter(rate)) for c in clients]
        waits = [await limiters[i % 2].try_take() for i in range(6)]
        assert waits[0] == 0.0
        # The second replica's own bucket would still be full: a wait proves the bucket is shared.
        assert all(w > 0 for w in waits[1:]), waits
        assert waits[1] == pytest.approx(1 / rate, rel=0.01)
        assert not any(lim.degraded for lim in limiters)
    finally:
        for c in clients:
            await c.aclose()


async def test_redis_down_falls_back_to_the_local_bucket(redis_server: RedisServer):
    client = open_redis(redis_server.url)
    try:
        limiter = RedisRateLimiter(client, "t:rate-limit", 0.01, fallback=LocalRateLimiter(0.01))
        assert await limiter.try_take() == 0.0
        redis_server.stop()
        # The local bucket is full: one more request gets in, then the local limit holds.
        assert await limiter.try_take() == 0.0
        assert limiter.degraded and limiter.failures == 1
        assert await limiter.try_take() > 0
    finally:
        await client.aclose()


def _replica(url: str, registry: WorkerRegistry) -> tuple[CacheAwarePolicy, RedisTreeSync]:
    policy = CacheAwarePolicy(PolicyConfig())
    sync = RedisTreeSync(
        open_redis(url), "t:decisions", registry, {Role.REGULAR: policy}, max_key_length=128, tokenized=False
    )
    return policy, sync


async def _wait_until(condition, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_decision_on_one_replica_reaches_the_others_tree(redis_server: RedisServer):
    # Each replica has its own registry (own worker ids) for the same two URLs.
    registries = []
    for _ in range(2):
        registry = WorkerRegistry()
        for port in (1, 2):
            registry.add(Worker(url=f"http://127.0.0.1:{port}"))
        registries.append(registry)
    (policy_a, sync_a), (policy_b, sync_b) = _replica(redis_server.url, registries[0]), _replica(redis_server.url, registries[1])
    sync_a.start()
    sync_b.start()
    try:
        await asyncio.wait_for(asyncio.gather(sync_a.subscribed.wait(), sync_b.subscribed.wait()), 10)
        prompt = "system prompt shared by a group " * 8
        chosen = policy_a.select_worker(list(registries[0]), RequestDescriptor("r1", None, prompt)).worker
        await _wait_until(lambda: sync_b.counts["applied"] == 1)
        same_url = registries[1].find(chosen.url, Role.REGULAR)
        assert same_url is not None
        # B's tree holds the published (bounded) prefix under its own id for that URL.
        match = policy_b.tree.prefix_match(prompt)
        assert match.length == 128 and match.tenants == (same_url.worker_id,)
        # So B sends the next request of the group where A sent the first.
        assert policy_b.select_worker(list(registries[1]), RequestDescriptor("r2", None, prompt + " q")).worker is same_url
        # And B's decision reaches A. Redis delivers a channel's messages in order, so A
        # had its own first decision back before B's: applying only one, it ignored its own.
        await _wait_until(lambda: sync_a.counts["applied"] == 1)
        assert policy_a.tree.prefix_match(prompt + " q").tenants == (chosen.worker_id,)
    finally:
        for sync in (sync_a, sync_b):
            await sync.stop()
            await sync._redis.aclose()
