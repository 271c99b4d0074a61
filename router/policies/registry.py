"""Policy names to policy objects: the one table of policies, and the one place they are built.

`--policy` and friends take their choices from this table, so a policy exists for the CLI
exactly when it can be built. Importing it is light (the policies are pure Python).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from router.config import PolicyConfig
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

# (config, rng, the router's KV event index or None) -> a fresh policy.
PolicyFactory = Callable[[PolicyConfig, random.Random, KVBlockIndex | None], Policy]


def _kv_aware(config: PolicyConfig, rng: random.Random, kv_index: KVBlockIndex | None) -> Policy:
    if kv_index is None:
        raise ValueError("policy 'kv_aware' needs the router's KV event index")
    return KVAwarePolicy(config, kv_index, rng)


POLICY_FACTORIES: dict[str, PolicyFactory] = {
    "random": lambda _config, rng, _kv: RandomPolicy(rng),
    "round_robin": lambda _config, _rng, _kv: RoundRobinPolicy(),
    "power_of_two": lambda _config, rng, _kv: PowerOfTwoPolicy(rng),
    "least_load": lambda _config, rng, _kv: LeastLoadPolicy(rng),
    "cache_aware": lambda config, _rng, _kv: CacheAwarePolicy(config),
    "prefix_hash": lambda config, _rng, _kv: ConsistentHashPolicy(config, name="prefix_hash"),
    "consistent_hashing": lambda config, _rng, _kv: ConsistentHashPolicy(config, name="consistent_hashing"),
    "session": lambda config, rng, _kv: SessionPolicy(config, rng),
    "kv_aware": _kv_aware,
}
# The names, in --help order.
POLICIES: tuple[str, ...] = tuple(POLICY_FACTORIES)


def create_policy(name: str, config: PolicyConfig, rng: random.Random, kv_index: KVBlockIndex | None = None) -> Policy:
    """A fresh policy instance (one per pool: policies keep per-pool state).

    `kv_index` is the router's one index of the engines' KV events (kv_aware reads it).
    Raises ValueError for a name outside `POLICIES`, listing the valid ones.
    """
    try:
        factory = POLICY_FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
    return factory(config, rng, kv_index)
