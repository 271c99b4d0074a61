"""The worker lifecycle as a pure state table: which event moves which state where.

    pending --ready--> ready <--unhealthy/healthy--> not_ready
    pending --startup_failed--> failed
    any --drain--> draining --(in-flight reaches 0)--> removed from the registry

Only `WorkerManager` applies events (router/workers/lifecycle.py); keeping the table
apart from it means every transition is unit-tested without a server or an event loop.
"""

from __future__ import annotations

import enum

from router.workers.worker import WorkerState


class LifecycleEvent(enum.StrEnum):
    READY = "ready"  # start-up probe passed and registration steps succeeded
    STARTUP_FAILED = "startup_failed"
    HEALTHY = "healthy"  # health thresholds say: back in service
    UNHEALTHY = "unhealthy"
    DRAIN = "drain"


class InvalidTransition(Exception):
    """An event that makes no sense in the worker's current state (a bug in the caller)."""


_S, _E = WorkerState, LifecycleEvent
_TABLE: dict[tuple[WorkerState, LifecycleEvent], WorkerState] = {
    (_S.PENDING, _E.READY): _S.READY,
    (_S.PENDING, _E.STARTUP_FAILED): _S.FAILED,
    (_S.READY, _E.UNHEALTHY): _S.NOT_READY,
    (_S.READY, _E.HEALTHY): _S.READY,
    (_S.NOT_READY, _E.HEALTHY): _S.READY,
    (_S.NOT_READY, _E.UNHEALTHY): _S.NOT_READY,
    # Draining is one-way: health verdicts that race with a drain change nothing.
    (_S.DRAINING, _E.HEALTHY): _S.DRAINING,
    (_S.DRAINING, _E.UNHEALTHY): _S.DRAINING,
    (_S.DRAINING, _E.DRAIN): _S.DRAINING,
    **{(s, _E.DRAIN): _S.DRAINING for s in (_S.PENDING, _S.READY, _S.NOT_READY, _S.FAILED)},
}


def next_state(state: WorkerState, event: LifecycleEvent) -> WorkerState:
    """The state after `event`; raises `InvalidTransition` for impossible pairs."""
    try:
        return _TABLE[(state, event)]
    except KeyError:
        raise InvalidTransition(f"event {event.value!r} is not valid for a worker in state {state.value!r}") from None
