"""`session`: keep each session (the session header's value) on one worker.

A session stays on its worker while that worker is a candidate, so multi-turn chats
reuse the worker's KV cache. New sessions, and sessions whose worker is not a candidate
(unhealthy, excluded on retry, removed), go to the least loaded worker and stick there
from then on. Requests without a key are balanced by load alone.

The mapping is bounded (`max_sessions`, least recently used forgotten first), and a
worker's sessions are forgotten when it leaves, so the map cannot grow without limit.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from router.config import PolicyConfig
from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.policies.load import least_loaded
from router.workers.worker import Worker


class SessionPolicy(Policy):
    name = "session"

    def __init__(self, config: PolicyConfig, rng: random.Random) -> None:
        if config.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {config.max_sessions}")
        self._max_sessions = config.max_sessions
        self._rng = rng
        self._home: OrderedDict[str, str] = OrderedDict()  # session key -> worker id, LRU order
        self._sessions_of: dict[str, set[str]] = {}  # worker id -> its session keys

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        key = request.session_key
        if key is None:
            return Selection(self._least_loaded(workers), "no_session")
        home = self._home.get(key)
        if home is not None:
            for worker in workers:
                if worker.worker_id == home:
                    self._home.move_to_end(key)
                    return Selection(worker, "session_hit")
        worker = self._least_loaded(workers)
        self._assign(key, worker.worker_id)
        return Selection(worker, "session_new")

    def home_of(self, session_key: str) -> str | None:
        """The worker id a session is pinned to, if any (for operators and tests)."""
        return self._home.get(session_key)

    def on_worker_removed(self, worker: Worker) -> None:
        for key in self._sessions_of.pop(worker.worker_id, set()):
            del self._home[key]

    def _least_loaded(self, workers: Sequence[Worker]) -> Worker:
        """Least loaded; on equal load the worker with fewest sessions, so sequential
        new sessions spread instead of all landing on the first idle worker."""
        return least_loaded(
            workers,
            self._rng,
            key=lambda w: (w.in_flight_requests, w.in_flight_tokens, len(self._sessions_of.get(w.worker_id, ()))),
        )

    def _assign(self, key: str, worker_id: str) -> None:
        self._unassign(key)
        self._home[key] = worker_id
        self._sessions_of.setdefault(worker_id, set()).add(key)
        while len(self._home) > self._max_sessions:
            self._unassign(next(iter(self._home)))

    def _unassign(self, key: str) -> None:
        worker_id = self._home.pop(key, None)
        if worker_id is None:
            return
        keys = self._sessions_of[worker_id]
        keys.discard(key)
        if not keys:
            del self._sessions_of[worker_id]
