"""`prefix_hash` / `consistent_hashing`: hash a request's prefix (or session) onto a ring.

Requests sharing a prefix key land on the same worker with no per-request state, and
adding or removing a worker moves only about 1/n of the keys. Each worker owns
`VIRTUAL_NODES` points on the ring, placed by hashing its URL, so placement is the same
across router restarts.

Bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded
Loads"): a worker may hold at most ceil(hash_load_factor * (total_in_flight + 1) / n)
requests; a full worker passes the request on to the next distinct worker clockwise
("hash_overflow"), so a hot prefix cannot swamp one worker.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterator, Sequence

from router.config import PolicyConfig
from router.placement.types import RequestDescriptor
from router.policies.base import Policy, Selection
from router.workers.worker import Worker

VIRTUAL_NODES = 160


def _hash(data: bytes) -> int:
    """A stable 64-bit hash (Python's `hash` of str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHashPolicy(Policy):
    """Serves under both names, `prefix_hash` and `consistent_hashing`."""

    def __init__(self, config: PolicyConfig, name: str = "consistent_hashing") -> None:
        if config.hash_load_factor < 1:
            raise ValueError(
                f"hash_load_factor must be >= 1 (got {config.hash_load_factor}): below 1 "
                "the workers together could not take the load"
            )
        self.name = name
        self._load_factor = config.hash_load_factor
        self._prefix_length = config.prefix_key_length
        self._points: dict[str, list[int]] = {}
        # The ring for the last candidate set (it rarely changes between calls; order is irrelevant).
        self._ring_ids: frozenset[str] = frozenset()
        self._ring_hashes: list[int] = []
        self._ring_owners: list[Worker] = []

    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        self._build_ring(workers)
        start = bisect.bisect_left(self._ring_hashes, _hash(self.key_bytes(request)))
        total = sum(w.in_flight_requests for w in workers)
        capacity = math.ceil(self._load_factor * (total + 1) / len(workers))
        # Some worker is always below capacity: capacity * n >= total + 1 > total.
        rank, worker = next(
            (rank, w) for rank, w in enumerate(self._walk(start, len(workers))) if w.in_flight_requests < capacity
        )
        return Selection(worker, "hash" if rank == 0 else "hash_overflow")

    def key_bytes(self, request: RequestDescriptor) -> bytes:
        """The session key when there is one, else the first `prefix_key_length` elements."""
        if request.session_key is not None:
            return b"s\0" + request.session_key.encode("utf-8", "surrogatepass")
        if request.routing_tokens is not None:
            prefix = request.routing_tokens[: self._prefix_length]
            return b"t\0" + ",".join(map(str, prefix)).encode()
        # JSON may carry lone surrogates ("\ud800"); they must hash, not raise.
        return b"c\0" + request.routing_text[: self._prefix_length].encode("utf-8", "surrogatepass")

    def on_worker_removed(self, worker: Worker) -> None:
        self._points.pop(worker.worker_id, None)
        if worker.worker_id in self._ring_ids:
            self._ring_ids, self._ring_hashes, self._ring_owners = frozenset(), [], []

    def _build_ring(self, workers: Sequence[Worker]) -> None:
        ids = frozenset(w.worker_id for w in workers)
        if ids == self._ring_ids:
            return
        ring = sorted(
            ((point, w) for w in workers for point in self._points_of(w)),
            key=lambda item: (item[0], item[1].url),
        )
        self._ring_ids = ids
        self._ring_hashes = [point for point, _ in ring]
        self._ring_owners = [w for _, w in ring]

    def _points_of(self, worker: Worker) -> list[int]:
        points = self._points.get(worker.worker_id)
        if points is None:
            points = [_hash(f"{worker.url}#{i}".encode()) for i in range(VIRTUAL_NODES)]
            self._points[worker.worker_id] = points
        return points

    def _walk(self, start: int, distinct: int) -> Iterator[Worker]:
        """Distinct workers clockwise from ring index `start` (wrapping), `distinct` of them."""
        seen: set[str] = set()
        size = len(self._ring_owners)
        for offset in range(size):
            worker = self._ring_owners[(start + offset) % size]
            if worker.worker_id not in seen:
                seen.add(worker.worker_id)
                yield worker
                if len(seen) == distinct:
                    return
