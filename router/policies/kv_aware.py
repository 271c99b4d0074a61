"""`kv_aware`: send a request to the worker whose KV cache really holds most of its prefix.

Unlike `cache_aware`, which guesses each worker's cache from the requests it routed,
this policy reads what the engines report in their KV events (`KVBlockIndex`), so it
sees evictions, restarts and traffic that bypassed the router. Scoring follows llm-d's
filter -> scorer -> picker shape, every score in [0, 1]:

- prefix score: leading prompt blocks the worker holds / full blocks in the prompt;
- load score: 1 - request load / the largest request load of any candidate
  (`router.policies.load.request_load`);
- total: `kv_overlap_weight` * prefix + `kv_load_weight` * load; the highest wins,
  ties to the least loaded (then at random).

Reasons (a metric label): `kv_hit` (the winner holds part of the prompt), `kv_miss`
(nobody does: load decided), `no_tokens` (the request has no token ids: the router needs
`--tokenizer-path`, or the client sends token ids; load decides).

The selection's cached-token estimate is the winner's matched blocks x the block size
the engines reported: what the engine itself holds, in whole blocks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from router.config import PolicyConfig
from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.policies.kv_block_index import KVBlockIndex
from router.policies.load import least_loaded, request_load
from router.workers.worker import Worker


class KVAwarePolicy(Policy):
    name = "kv_aware"

    def __init__(self, config: PolicyConfig, index: KVBlockIndex, rng: random.Random) -> None:
        self._config = config
        self._index = index
        self._rng = rng

    def scores(self, workers: Sequence[Worker], request: RequestDescriptor) -> dict[str, tuple[float, float]]:
        """worker id -> (prefix score, load score), each in [0, 1]."""
        return self._scores(workers, request)[0]

    def _scores(
        self, workers: Sequence[Worker], request: RequestDescriptor
    ) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
        """The scores, and each worker's matched prefix in tokens (whole blocks)."""
        loads = {w.worker_id: request_load(w) for w in workers}
        most = max(loads.values())
        load = {wid: 1.0 - (n / most if most else 0.0) for wid, n in loads.items()}
        matched, total = self._index.matched_blocks(request.routing_tokens or [], load.keys())
        block_size = self._index.block_size(load.keys()) or 0
        scores = {wid: (matched[wid] / total if total else 0.0, load[wid]) for wid in load}
        return scores, {wid: blocks * block_size for wid, blocks in matched.items()}

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        if not request.routing_tokens:
            return Selection(least_loaded(workers, self._rng), "no_tokens")
        scores, cached = self._scores(workers, request)
        cfg = self._config

        def total(w: Worker) -> float:
            prefix, load = scores[w.worker_id]
            return cfg.kv_overlap_weight * prefix + cfg.kv_load_weight * load

        best = max(total(w) for w in workers)
        winner = least_loaded([w for w in workers if total(w) == best], self._rng)
        reason = "kv_hit" if scores[winner.worker_id][0] > 0 else "kv_miss"
        return Selection(winner, reason, cached[winner.worker_id])
