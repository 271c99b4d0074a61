"""How policies compare worker load: one definition, shared by every load-aware policy.

A worker's request load is what its engine last reported (running + waiting, from the
load monitor) corrected by what this router changed since: its own in-flight count now
minus its in-flight count at that sample. Requests this router sent after the sample are
added, requests of its own that finished since are taken off, so a burst between two
scrapes still spreads. Every replica reads the same engine numbers, so replicas agree up
to their own last second of traffic; requests of other replicas since the sample are the
one thing no replica sees until the next scrape. Without a fresh sample (monitoring off,
a worker that exports no metrics, a scrape that failed for a few intervals) the load is
the router's own in-flight count, as before.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from router.workers.worker import Worker


def request_load(worker: Worker) -> int:
    """Requests on `worker`: the engine's last count plus this router's change since, or
    the router's in-flight count when there is no fresh engine sample."""
    sample = worker.engine_load
    if sample is None:
        return worker.in_flight_requests
    return max(0, sample.requests + worker.in_flight_requests - worker.in_flight_at_sample)


def load_of(worker: Worker) -> tuple[int, int]:
    """Request load first (`request_load`), this router's in-flight tokens to break ties."""
    return request_load(worker), worker.in_flight_tokens


def least_loaded(
    workers: Sequence[Worker],
    rng: random.Random | None = None,
    key: Callable[[Worker], Any] = load_of,
) -> Worker:
    """The worker with the smallest `key`.

    Exact ties go to `rng` when given, else to the first in `workers`: with idle workers
    and sequential traffic, always taking the first would put everything on one worker.
    """
    best = min(key(w) for w in workers)
    tied = [w for w in workers if key(w) == best]
    if rng is not None and len(tied) > 1:
        return rng.choice(tied)
    return tied[0]
