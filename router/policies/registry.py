"""Policy names (`router.config.POLICIES`) to policy objects: the one place they are built."""

from __future__ import annotations

import random

from router.config import POLICIES, PolicyConfig
from router.policies.base import Policy
from router.policies.cache_aware import CacheAwarePolicy
from router.policies.consistent_hash import ConsistentHashPolicy
from router.policies.kv_aware import KVAwarePolicy
from router.policies.kv_block_index import KVBlockIndex
from router.policies.least_load import LeastLoadPolicy
from router.policies.power_of_two import PowerOfTwoPolicy
from router.policies.random_policy import RandomPolicy
from router.policies.round_robin import RoundRobinPolicy
from router.policies.session import SessionPolicy


def create_policy(name: str, config: PolicyConfig, rng: random.Random, kv_index: KVBlockIndex | None = None) -> Policy:
    """A fresh policy instance (one per pool: policies keep per-pool state).

    `kv_index` is the router's one index of the engines' KV events (kv_aware reads it).
    Raises ValueError for a name outside `POLICIES`, listing the valid ones.
    """
    if name == "random":
        return RandomPolicy(rng)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "power_of_two":
        return PowerOfTwoPolicy(rng)
    if name == "least_load":
        return LeastLoadPolicy(rng)
    if name == "cache_aware":
        return CacheAwarePolicy(config)
    if name in ("prefix_hash", "consistent_hashing"):
        return ConsistentHashPolicy(config, name=name)
    if name == "session":
        return SessionPolicy(config, rng)
    if name == "kv_aware":
        if kv_index is None:
            raise ValueError("policy 'kv_aware' needs the router's KV event index")
        return KVAwarePolicy(config, kv_index, rng)
    raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
