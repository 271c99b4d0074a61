"""`random`: a uniform pick. The baseline every smarter policy is measured against."""

from __future__ import annotations

import random
from collections.abc import Sequence

from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.workers.worker import Worker


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        return Selection(self._rng.choice(workers), "random")
