"""`least_load`: the candidate with the smallest request load (`router.policies.load`), then tokens."""

from __future__ import annotations

import random
from collections.abc import Sequence

from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.policies.load import least_loaded
from router.workers.worker import Worker


class LeastLoadPolicy(Policy):
    name = "least_load"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        return Selection(least_loaded(workers, self._rng), "least_load")
