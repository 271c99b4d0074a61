"""`cache_aware`: send a request where its prefix was sent before, unless load is skewed.

SGLang's cache-aware policy. The router keeps an approximate model of each worker's
prefix cache (a `RadixTree` with one tenant per worker) and decides in this order:

1. Balance gate: if (max_load - min_load) > balance_abs_threshold and
   max_load > balance_rel_threshold * min_load, cache affinity is costing more than it
   saves: take the least loaded worker ("balance_gate").
2. If some worker holds more than cache_threshold of the key as a prefix, take it
   ("cache_hit"; among equal matches the least loaded).
3. Otherwise take the worker whose tree is smallest ("smallest_tree"): it has the most
   room, and spreading new prefixes keeps future hits balanced.

Load here is `request_load` (the engine's count corrected by this router's own).
Whatever was chosen, the key is inserted under that worker, since that is where the
engine will now cache it. The selection reports the
chosen worker's matched prefix (before that insert) as its cached-token estimate: tokens
for token keys, characters / `CHARS_PER_TOKEN` for text keys, the same conversion the
prompt's own estimate uses.

Router replicas (docs/replicas.md): `on_decision` hears every choice made here (the
Redis sync publishes it) and `observe` applies a choice another replica made, so each
replica's tree approximates all traffic, not only its own share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from router.config import PolicyConfig
from router.placement.types import CHARS_PER_TOKEN, RequestDescriptor
from router.policies.base import Policy, Selection
from router.policies.keys import routing_key
from router.policies.load import least_loaded, load_of, request_load
from router.policies.radix_tree import Key, RadixTree
from router.workers.worker import Worker

# Hears each (routing key, chosen worker) after the tree has recorded it; must not block.
DecisionListener = Callable[[Key, Worker], None]


class CacheAwarePolicy(Policy):
    name = "cache_aware"

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config
        self.tree = RadixTree(config.max_tree_size)
        self.on_decision: DecisionListener | None = None

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        key = routing_key(request)
        selection = self._choose(workers, key)
        self.tree.insert(key, selection.worker.worker_id)
        if self.on_decision is not None:
            self.on_decision(key, selection.worker)
        return selection

    def observe(self, key: Key, worker: Worker) -> None:
        """Another router replica sent `key` to `worker`: the engine caches it there all
        the same, so the tree records it as if chosen here (and tells no listener)."""
        self.tree.insert(key, worker.worker_id)

    def _choose(self, workers: Sequence[Worker], key: Key) -> Selection:
        loads = [request_load(w) for w in workers]
        max_load, min_load = max(loads), min(loads)
        if (
            max_load - min_load > self._config.balance_abs_threshold
            and max_load > self._config.balance_rel_threshold * min_load
        ):
            chosen = least_loaded(workers)
            return Selection(chosen, "balance_gate", self._cached_tokens(key, chosen))

        by_id = {w.worker_id: w for w in workers}
        match = self.tree.prefix_match(key, by_id.keys())
        if key and match.length / len(key) > self._config.cache_threshold:
            holders = [by_id[t] for t in match.tenants]
            return Selection(least_loaded(holders), "cache_hit", _as_tokens(key, match.length))

        smallest = min(workers, key=lambda w: (self.tree.tenant_size(w.worker_id), load_of(w)))
        return Selection(smallest, "smallest_tree", self._cached_tokens(key, smallest))

    def _cached_tokens(self, key: Key, worker: Worker) -> int:
        """How much of `key` the tree says `worker` holds, in tokens."""
        return _as_tokens(key, self.tree.prefix_match(key, (worker.worker_id,)).length) if key else 0

    def evict(self, now: float) -> int:
        """Trim the tree to `max_tree_size`.

        Inserts already evict as they go, so memory holds between ticks; the tick is the
        app's uniform housekeeping call and returns 0 while the bound holds.
        """
        return self.tree.evict()

    def on_worker_removed(self, worker: Worker) -> None:
        self.tree.remove_tenant(worker.worker_id)


def _as_tokens(key: Key, matched: int) -> int:
    """A matched key length in tokens: token keys count tokens, text keys characters."""
    return matched if isinstance(key, tuple) else matched // CHARS_PER_TOKEN
