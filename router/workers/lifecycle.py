"""Worker lifecycle: registration, readiness, health verdicts, drain and removal.

`WorkerManager` owns every state change; the states and the events that move them are a
pure table in `router.workers.transitions`, the scrape-time metrics are
`router.workers.collector.WorkerCollector`.

A worker that is draining takes no new requests (`Worker.accepts_new_requests` is only
true when ready) while its in-flight requests finish; it leaves the registry when its
in-flight count reaches zero (or after `request_timeout_secs`, the longest a request may
legitimately run). The drain sleeps until `LoadGuard.release` wakes it at zero, so an
idle router does no work for a worker that drains for minutes. A failed worker stays
listed, with `last_error`, until an operator deletes it, so a typo'd URL is visible
rather than silently dropped.

Every deadline here (bring-up, drain) is read from the manager's `clock`, the same clock
placement and the breakers use.

Wiring (router/app.py):
- At app start: `manager = WorkerManager(config, registry, session=<dispatch's
  aiohttp.ClientSession, or None to let the manager own one>)`; adapters add their
  registration steps with `manager.add_registration_hook(hook, roles={Role.PREFILL})`
  (e.g. ATOM's `GET /kv_transfer_info` into `worker.engine_info`), then
  `await manager.start()` (registers the configured workers in the background and starts
  health checks).
- Per request: nothing; placement reads `worker.accepts_new_requests(manager.clock())`
  and dispatch records outcomes on `worker.breaker` with the same clock.
- Admin API: `router.admin.admin_routes(manager, auth)`.
- Metrics: `prometheus_registry.register(WorkerCollector(manager))` at app start.
- At shutdown: `await manager.stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING

import aiohttp

from router.config import RouterConfig, WorkerSpec
from router.errors import WorkerConflictError, WorkerNotFoundError
from router.transports import Transport
from router.workers.circuit_breaker import CircuitBreaker
from router.workers.health import HealthChecker, HealthVerdict, probe
from router.workers.model_list import ModelEntry, ModelListUnavailable, fetch_model_list
from router.workers.registry import WorkerRegistry
from router.workers.specs import validate_spec
from router.workers.transitions import LifecycleEvent, next_state
from router.workers.worker import Role, Worker, WorkerState

if TYPE_CHECKING:
    from router.transports.grpc_worker import GrpcWorkerProbe

logger = logging.getLogger("atom_mesh.lifecycle")

RegistrationHook = Callable[[Worker, aiohttp.ClientSession], Awaitable[None]]


class WorkerManager:
    """Owns every state change of every worker; the registry stays a plain index."""

    def __init__(
        self,
        config: RouterConfig,
        registry: WorkerRegistry,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        grpc_probe: GrpcWorkerProbe | None = None,
    ) -> None:
        self.config = config
        # Health and models of grpc:// workers; None: the router was built without gRPC.
        self.grpc_probe = grpc_probe
        self.registry = registry
        self.clock = clock
        self._session = session
        self._owns_session = session is None
        self._hooks: list[tuple[frozenset[Role] | None, RegistrationHook]] = []
        self._bring_up: dict[str, asyncio.Task[None]] = {}
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._health: HealthChecker | None = None
        registry.on_removed(self._forget)

    # -- start / stop ---------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("WorkerManager.start() has not run yet")
        return self._session

    def add_registration_hook(self, hook: RegistrationHook, roles: Collection[Role] | None = None) -> None:
        """Run `hook(worker, session)` during registration of workers of `roles` (None: all).

        Hooks run after the worker answered its health endpoint and its models were
        discovered; they may fill `worker.engine_info`. A hook that raises fails the worker
        (its message becomes `last_error`), so raise with a message that says what to fix.
        """
        self._hooks.append((frozenset(roles) if roles is not None else None, hook))

    async def start(self) -> None:
        """Register the configured workers (in the background) and start health checks."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._health = HealthChecker(
            self.config.health, self._session, self._checked_workers, self._on_verdict, probe_worker=self._probe
        )
        for spec in self.config.workers:
            await self.add(spec)
        self._health.start()

    async def stop(self) -> None:
        """Cancel background work; close the HTTP session if the manager created it."""
        if self._health is not None:
            await self._health.stop()
        tasks = [*self._bring_up.values(), *self._drains.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- admin operations -------------------------------------------------------------

    async def add(self, spec: WorkerSpec, *, wait: bool = False) -> Worker:
        """Register a worker as pending and bring it up in the background.

        With `wait`, return only once it is ready or failed (bounded by
        `worker_startup_timeout_secs`).
        """
        role = validate_spec(spec, self.config.pd_disaggregation)
        worker = Worker(
            url=spec.url,
            role=role,
            models=frozenset([spec.model]) if spec.model else frozenset(),
            bootstrap_port=spec.bootstrap_port,
            kv_events_endpoint=spec.kv_events_endpoint,
            labels=dict(spec.labels),
            state=WorkerState.PENDING,
            breaker=CircuitBreaker.from_config(self.config.circuit_breaker),
        )
        try:
            self.registry.add(worker)
        except ValueError as exc:
            raise WorkerConflictError(f"{exc}; DELETE it first to re-register") from None
        logger.info("worker registered", extra={"worker": worker.worker_id, "url": worker.url, "role": role.value})
        worker_id = worker.worker_id
        task = asyncio.create_task(self._bring_up_worker(worker), name=f"bring-up-{worker_id}")
        self._bring_up[worker_id] = task
        task.add_done_callback(lambda _t: self._bring_up.pop(worker_id, None))
        if wait:
            await asyncio.wait({task})  # returns (never raises) if a drain/removal cancels the bring-up
        return worker

    def get(self, worker_id: str) -> Worker:
        worker = self.registry.get(worker_id)
        if worker is None:
            raise WorkerNotFoundError(f"no worker with id {worker_id!r}; GET /workers lists them")
        return worker

    def remove(self, worker_id: str) -> Worker:
        """Remove at once. In-flight requests keep their worker object and still finish;
        use `drain` to also wait for them before the worker leaves the listing."""
        worker = self.get(worker_id)
        self.registry.remove(worker_id)
        logger.info("worker removed", extra={"worker": worker_id, "url": worker.url})
        return worker

    async def drain(self, worker_id: str, *, wait: bool = False) -> Worker:
        """Stop sending new requests to the worker; remove it once its in-flight count is 0."""
        worker = self.get(worker_id)
        self._apply(worker, LifecycleEvent.DRAIN)
        bring_up = self._bring_up.pop(worker_id, None)
        if bring_up is not None:
            bring_up.cancel()
        task = self._drains.get(worker_id)
        if task is None:
            task = asyncio.create_task(self._finish_drain(worker), name=f"drain-{worker_id}")
            self._drains[worker_id] = task
        if wait:
            await asyncio.wait({task})
        return worker

    def health_counts(self, worker: Worker) -> tuple[int, int]:
        """(consecutive failed, consecutive good) health probes, for the admin listing."""
        if self._health is None:
            return 0, 0
        tracker = self._health.tracker(worker)
        return tracker.consecutive_failures, tracker.consecutive_successes

    # -- internals ----------------------------------------------------------------------

    def _apply(self, worker: Worker, event: LifecycleEvent) -> None:
        old = worker.state
        worker.state = next_state(old, event)
        if worker.state is not old:
            logger.info(
                "worker state changed",
                extra={"worker": worker.worker_id, "from": old.value, "to": worker.state.value, "event": event.value},
            )

    def _checked_workers(self) -> Iterable[Worker]:
        return [w for w in self.registry if w.state in (WorkerState.READY, WorkerState.NOT_READY)]

    def _on_verdict(self, worker: Worker, verdict: HealthVerdict, reason: str) -> None:
        if self.registry.get(worker.worker_id) is not worker:
            return  # removed while its probe was in flight
        if verdict is HealthVerdict.BECAME_UNHEALTHY:
            worker.last_error = reason
            if worker.state is not WorkerState.DRAINING:
                logger.warning("worker unhealthy", extra={"worker": worker.worker_id, "reason": reason})
            self._apply(worker, LifecycleEvent.UNHEALTHY)
        else:
            worker.last_error = ""
            self._apply(worker, LifecycleEvent.HEALTHY)

    def _forget(self, worker: Worker) -> None:
        """Registry removal listener: drop every trace of the worker here."""
        if self._health is not None:
            self._health.forget(worker)
        for tasks in (self._bring_up, self._drains):
            task = tasks.pop(worker.worker_id, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def _bring_up_worker(self, worker: Worker) -> None:
        cfg = self.config
        deadline = self.clock() + cfg.worker_startup_timeout_secs
        while True:
            reason = await self._probe(worker)
            if not reason:
                break
            worker.last_error = reason
            remaining = deadline - self.clock()
            if remaining <= 0:
                self._fail(
                    worker,
                    f"not ready after {cfg.worker_startup_timeout_secs:g}s ({reason}); check the engine's log, "
                    "or raise --worker-startup-timeout-secs",
                )
                return
            await asyncio.sleep(min(cfg.worker_startup_check_interval, remaining))
        try:
            await self._discover_models(worker)
            for roles, hook in self._hooks:
                if roles is None or worker.role in roles:
                    await hook(worker, self.session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(worker, f"registration step failed: {exc.__class__.__name__}: {exc}")
            return
        worker.last_error = ""
        if self._health is not None:
            self._health.forget(worker)  # start counting afresh, as healthy
        self._apply(worker, LifecycleEvent.READY)

    async def _probe(self, worker: Worker) -> str:
        """One readiness probe ("" = ready): GET the health endpoint, or gRPC health."""
        if worker.transport is Transport.GRPC:
            if self.grpc_probe is None:
                return "this router has no gRPC transport configured"
            return await self.grpc_probe.health(worker, self.config.health.timeout_secs)
        return await probe(self.session, worker.url, self.config.health.endpoint, self.config.health.timeout_secs)

    async def worker_models(self, worker: Worker) -> list[ModelEntry]:
        """The worker's model list (`GET /v1/models`, or `GetModelInfo` for a gRPC worker);
        raises `ModelListUnavailable`."""
        if worker.transport is Transport.GRPC and self.grpc_probe is not None:
            return await self.grpc_probe.models(worker, self.config.health.timeout_secs)
        return await fetch_model_list(self.session, worker.url, self.config.health.timeout_secs)

    def _fail(self, worker: Worker, message: str) -> None:
        worker.last_error = message
        logger.warning("worker failed", extra={"worker": worker.worker_id, "url": worker.url, "reason": message})
        self._apply(worker, LifecycleEvent.STARTUP_FAILED)

    async def _discover_models(self, worker: Worker) -> None:
        """Learn the served models from `GET /v1/models`; engines without it match any model."""
        try:
            entries = await self.worker_models(worker)
        except ModelListUnavailable as exc:
            logger.info("no model list", extra={"worker": worker.worker_id, "reason": str(exc)})
            return
        ids = {m["id"] for m in entries}
        if ids:
            worker.models = frozenset(ids) | worker.models

    async def _finish_drain(self, worker: Worker) -> None:
        """Remove the worker once its last in-flight request ends, or at the deadline.

        `LoadGuard.release` sets `worker.idle` when the count reaches 0; nothing wakes this
        task before that (a draining worker gets no new requests, so the count only falls).
        """
        deadline = self.clock() + self.config.request_timeout_secs
        idle = worker.idle = asyncio.Event()
        try:
            while worker.in_flight_requests > 0 and (remaining := deadline - self.clock()) > 0:
                idle.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await idle.wait()
                except TimeoutError:
                    pass  # the loop re-reads the clock: the deadline is the manager's, not the loop's
        finally:
            worker.idle = None
        if worker.in_flight_requests > 0:
            logger.warning(
                "drain deadline passed with requests in flight; removing anyway",
                extra={"worker": worker.worker_id, "in_flight": worker.in_flight_requests},
            )
        self._drains.pop(worker.worker_id, None)
        if self.registry.get(worker.worker_id) is worker:
            self.registry.remove(worker.worker_id)
            logger.info("worker drained and removed", extra={"worker": worker.worker_id, "url": worker.url})
