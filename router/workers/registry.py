"""The set of known workers: an in-memory index, no I/O.

Lifecycle work (discovery, health checks, drain) lives in other modules and mutates
workers through this registry; policies learn of removals through `on_removed` listeners
so their per-worker state (trees, hash rings) never outlives the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from router.workers.worker import Role, Worker


class WorkerRegistry:
    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}
        self._removal_listeners: list[Callable[[Worker], None]] = []

    def add(self, worker: Worker) -> Worker:
        """Add a worker; a second worker with the same URL and role is refused."""
        if self.find(worker.url, worker.role) is not None:
            raise ValueError(f"worker {worker.url} ({worker.role.value}) is already registered")
        self._workers[worker.worker_id] = worker
        return worker

    def remove(self, worker_id: str) -> Worker:
        worker = self._workers.pop(worker_id)
        for listener in self._removal_listeners:
            listener(worker)
        return worker

    def get(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    def find(self, url: str, role: Role | None = None) -> Worker | None:
        url = url.rstrip("/")
        for worker in self._workers.values():
            if worker.url == url and (role is None or worker.role is role):
                return worker
        return None

    def on_removed(self, listener: Callable[[Worker], None]) -> None:
        self._removal_listeners.append(listener)

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self._workers.values()))

    def __len__(self) -> int:
        return len(self._workers)
