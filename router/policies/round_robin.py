"""`round_robin`: the next candidate in turn, whatever its load.

The counter indexes the candidate list of each call; when the candidate set changes
(a worker becomes unavailable) the rotation continues over the new list.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.workers.worker import Worker


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = 0

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        worker = workers[self._counter % len(workers)]
        self._counter += 1
        return Selection(worker, "round_robin")
