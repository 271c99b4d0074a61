"""How policies compare worker load: one definition, shared by every load-aware policy."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from router.workers.worker import Worker


def load_of(worker: Worker) -> tuple[int, int]:
    """In-flight requests first, in-flight tokens to break ties (both kept by `LoadGuard`)."""
    return worker.in_flight_requests, worker.in_flight_tokens


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
