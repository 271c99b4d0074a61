"""The one place load counters are taken and released.

Every path a request can end by (success, upstream error, client disconnect,
cancellation, timeout) releases through `LoadGuard.release`, which is idempotent, so
counters always return to zero. Reaching zero on a worker wakes a drain waiting for it
(`Worker.idle`).
"""

from __future__ import annotations

from collections.abc import Iterable

from router.workers.worker import Worker


class LoadGuard:
    """Holds one in-flight request (and its estimated tokens) on each of a set of workers."""

    __slots__ = ("_workers", "_tokens", "_held")

    def __init__(self, workers: Iterable[Worker], tokens: int = 0) -> None:
        self._workers = tuple(workers)
        self._tokens = tokens
        for worker in self._workers:
            worker.in_flight_requests += 1
            worker.in_flight_tokens += tokens
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        for worker in self._workers:
            worker.in_flight_requests -= 1
            worker.in_flight_tokens -= self._tokens
            if worker.in_flight_requests == 0 and worker.idle is not None:
                worker.idle.set()
