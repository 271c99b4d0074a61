"""Worker overload protection: keep requests off workers whose engine says it is full (pure).

A worker is overloaded when its engine's last fresh sample (`Worker.engine_load`, kept by
the load monitor) queues at least `overload_waiting_requests` requests or fills at least
`overload_token_usage` of its KV cache. Sending it more only lengthens its queue while
another worker has room, so while at least one candidate is under both thresholds the
overloaded ones are dropped (reason `overload_filtered`). When every candidate is
overloaded there is no better place: the request goes to the least loaded of them
(`overload_all`), or, with `overload_shed`, is refused with 503 and Retry-After (the
monitor's interval: the earliest the numbers can change). A worker without a fresh
sample is never called overloaded: no number, no verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.config import LoadMonitorConfig
from router.errors import WorkerOverloadShedError
from router.policies.load import load_of
from router.workers.worker import Worker

OVERLOAD_FILTERED = "overload_filtered"
OVERLOAD_ALL = "overload_all"


def is_overloaded(worker: Worker, config: LoadMonitorConfig) -> bool:
    """True when the worker's fresh engine sample is at or above either threshold."""
    sample = worker.engine_load
    return sample is not None and (
        sample.waiting >= config.overload_waiting_requests or sample.kv_usage >= config.overload_token_usage
    )


@dataclass(frozen=True)
class Filtered:
    """The candidates left for the policy, and why some were taken out ("" if none were)."""

    workers: list[Worker]
    reason: str = ""


def filter_overloaded(candidates: Sequence[Worker], config: LoadMonitorConfig, role: str) -> Filtered:
    """The candidates a policy may choose from under overload protection.

    Raises `WorkerOverloadShedError` when every candidate is overloaded and shedding is on.
    """
    workers = list(candidates)
    if not config.overload_protection or not config.enabled:
        return Filtered(workers)
    overloaded = [w for w in workers if is_overloaded(w, config)]
    if not overloaded:
        return Filtered(workers)
    if len(overloaded) < len(workers):
        return Filtered([w for w in workers if w not in overloaded], OVERLOAD_FILTERED)
    if config.overload_shed:
        raise WorkerOverloadShedError(
            f"every {role} worker is overloaded (engine queue >= {config.overload_waiting_requests} requests "
            f"or KV cache >= {config.overload_token_usage:.0%} full); retry later, or add workers",
            retry_after=config.interval_secs,
        )
    least = min(load_of(w) for w in workers)
    return Filtered([w for w in workers if load_of(w) == least], OVERLOAD_ALL)
