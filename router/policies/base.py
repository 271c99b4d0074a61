"""The one interface every routing policy implements, for regular, prefill and decode pools.

Like SGLang's gateway trait `select_worker(workers, request_info)`: a policy gets the
candidate workers (already filtered to ready, breaker-closed, model-serving ones) and the
request descriptor, and returns one worker and a reason label. Policies are pure: no I/O,
no clocks; randomness comes from an injected `random.Random`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from router.placement.types import RequestDescriptor
from router.workers.worker import Worker


@dataclass(frozen=True)
class Selection:
    """A policy's choice and why (the reason is a metric label: cache_hit, balance_gate ...).

    `cached_tokens` is the policy's estimate of how many leading prompt tokens the chosen
    worker already caches, taken before the choice updates any state; policies that
    model no cache report 0. A P/D pool weighs it against the prompt's length to decide
    whether a prefill worker is worth pairing (`router.placement.disagg_decider`).
    """

    worker: Worker
    reason: str
    cached_tokens: int = 0


class Policy(abc.ABC):
    """Picks a worker from a non-empty candidate list."""

    name: str = ""

    @abc.abstractmethod
    def select_worker(self, workers: Sequence[Worker], request: RequestDescriptor) -> Selection:
        """Choose one of `workers` (never empty) for `request`."""

    def on_worker_removed(self, worker: Worker) -> None:
        """Forget per-worker state (trees, hash-ring slots) when a worker leaves."""

    def evict(self, now: float) -> int:
        """Periodic housekeeping: the app calls it every `eviction_interval_secs` on each
        policy. Policies with bounded state trim it here; returns how much was freed."""
        return 0
