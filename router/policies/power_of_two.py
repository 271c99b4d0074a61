"""`power_of_two`: sample two candidates, keep the less loaded one.

Mitzenmacher's "power of two choices": nearly the balance of least-load while reading
only two workers' counters, and without herding every request onto the one idle worker
when load counters lag.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.policies.load import load_of
from router.workers.worker import Worker


class PowerOfTwoPolicy(Policy):
    name = "power_of_two"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        if len(workers) == 1:
            return Selection(workers[0], "power_of_two")
        first, second = self._rng.sample(list(workers), 2)
        # Ties keep the first sample, which is itself random.
        winner = second if load_of(second) < load_of(first) else first
        return Selection(winner, "power_of_two")
