"""What the data path asks of the router's global state, and the in-process answer.

Why a seam: every request needs four global facts: admission (concurrency, queue, rate
limit), placement (policy state, health, breakers, in-flight load), the load it holds
while it runs, and the outcome of each leg (circuit breakers). With one process they are
plain calls on the objects in `router.app.RouterService` (`LocalDecisions`). With several
processes (`router.processes`) the data path runs in relay processes and the same four
questions go to the coordinator process that owns that state
(`router.processes.relay_link.RemoteDecisions`), so every decision still sees all traffic.
The inference path (`router.inference`) and the dispatcher (`router.dispatch`) only know
this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from router.admission import AdmissionController
from router.load_guard import LoadGuard
from router.placement.types import PlacementPlan, RequestDescriptor, plan_workers
from router.workers.worker import Worker


class Held(Protocol):
    """Something a request holds until it ends (an admission slot, load on its workers);
    `release()` is idempotent."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class Placement:
    """A plan, and the in-flight load it holds on its workers from the moment it was made
    (so the next decision sees it), released when the attempt ends."""

    plan: PlacementPlan
    hold: Held


class Decisions(Protocol):
    """The data path's questions to the router's global state."""

    async def admit(self) -> Held:
        """An admission slot, or an `AdmissionRejected` (429/503)."""
        ...

    async def place(self, descriptor: RequestDescriptor) -> Placement:
        """A plan holding load on its workers, or a `PlacementError` (404/503)."""
        ...

    def succeeded(self, worker: Worker) -> None:
        """A leg on `worker` worked, or failed by the request's fault (a 4xx)."""
        ...

    def failed(self, worker: Worker) -> None:
        """A leg on `worker` failed by the worker's fault (down, 5xx, hung)."""
        ...


class LocalDecisions:
    """The decisions of a one-process router, or of the coordinator for its relays:
    direct calls on the admission controller, the planner and the workers' breakers."""

    def __init__(
        self,
        admission: AdmissionController,
        plan: Callable[[RequestDescriptor], PlacementPlan],
        clock: Callable[[], float],
    ) -> None:
        self._admission = admission
        self._plan = plan
        self._clock = clock

    async def admit(self) -> Held:
        return await self._admission.acquire()

    async def place(self, descriptor: RequestDescriptor) -> Placement:
        return self.place_now(descriptor)

    def place_now(self, descriptor: RequestDescriptor) -> Placement:
        """`place` without awaiting: placement is synchronous in-process."""
        plan = self._plan(descriptor)
        return Placement(plan, LoadGuard(plan_workers(plan), descriptor.estimated_tokens))

    def succeeded(self, worker: Worker) -> None:
        worker.breaker.record_success()

    def failed(self, worker: Worker) -> None:
        worker.breaker.record_failure(self._clock())
