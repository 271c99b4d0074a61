"""Active health checks: pure threshold logic (`HealthTracker`) apart from the probe loop.

Why thresholds: one lost probe on a busy 2-core box must not pull a worker out of
rotation, and one lucky probe must not put a sick worker back. A worker turns unhealthy
after `failure_threshold` consecutive failed probes and healthy again after
`success_threshold` consecutive good ones.

Wiring: do not construct `HealthChecker` yourself; `router.workers.lifecycle.WorkerManager`
owns one and starts/stops it with itself. Use `probe()` where a single readiness check is
needed (worker start-up).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp

from router.config import HealthCheckConfig
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.health")


class HealthVerdict(enum.StrEnum):
    """A change of health that a probe result caused (no verdict: nothing changed)."""

    BECAME_HEALTHY = "became_healthy"
    BECAME_UNHEALTHY = "became_unhealthy"


@dataclass
class HealthTracker:
    """Counts consecutive probe outcomes for one worker; pure, no I/O, no clock.

    `healthy` starts True: a worker only gets a tracker once start-up proved it ready.
    """

    failure_threshold: int = 3
    success_threshold: int = 2
    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("health thresholds must be >= 1 (check --health-failure/success-threshold)")

    def observe(self, ok: bool) -> HealthVerdict | None:
        """Record one probe outcome; return the verdict if health flipped."""
        if ok:
            self.consecutive_failures = 0
            self.consecutive_successes += 1
            if not self.healthy and self.consecutive_successes >= self.success_threshold:
                self.healthy = True
                return HealthVerdict.BECAME_HEALTHY
        else:
            self.consecutive_successes = 0
            self.consecutive_failures += 1
            if self.healthy and self.consecutive_failures >= self.failure_threshold:
                self.healthy = False
                return HealthVerdict.BECAME_UNHEALTHY
        return None


async def probe(session: aiohttp.ClientSession, url: str, endpoint: str, timeout_secs: float) -> str:
    """GET `url + endpoint`; return "" when it answered 2xx, else a short reason.

    Any transport error or timeout is a failed probe, never an exception: the caller only
    needs to know whether the worker is serving.
    """
    target = url + (endpoint if endpoint.startswith("/") else "/" + endpoint)
    try:
        async with session.get(target, timeout=aiohttp.ClientTimeout(total=timeout_secs)) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return ""
            return f"GET {target} answered {resp.status}"
    except TimeoutError:
        return f"GET {target} timed out after {timeout_secs:g}s"
    except aiohttp.ClientError as exc:
        return f"GET {target} failed: {exc.__class__.__name__}: {exc}"


class HealthChecker:
    """Probes workers every `interval_secs` and reports verdicts to `on_verdict`.

    `workers_to_check` is called each round (the manager returns its ready and not-ready
    workers), so added, drained or removed workers need no bookkeeping here beyond
    `forget()`.
    """

    def __init__(
        self,
        config: HealthCheckConfig,
        session: aiohttp.ClientSession,
        workers_to_check: Callable[[], Iterable[Worker]],
        on_verdict: Callable[[Worker, HealthVerdict, str], None],
        *,
        probe_worker: Callable[[Worker], Awaitable[str]] | None = None,
    ) -> None:
        self._config = config
        self._session = session
        # How one worker is probed ("" = healthy); default: GET its health endpoint.
        self._probe_worker = probe_worker or self._probe_http
        self._workers_to_check = workers_to_check
        self._on_verdict = on_verdict
        self._trackers: dict[str, HealthTracker] = {}
        self._task: asyncio.Task[None] | None = None

    def tracker(self, worker: Worker) -> HealthTracker:
        """The worker's tracker (created healthy on first use)."""
        tracker = self._trackers.get(worker.worker_id)
        if tracker is None:
            tracker = HealthTracker(self._config.failure_threshold, self._config.success_threshold)
            self._trackers[worker.worker_id] = tracker
        return tracker

    def forget(self, worker: Worker) -> None:
        self._trackers.pop(worker.worker_id, None)

    async def check_once(self) -> None:
        """One round: probe every worker concurrently and apply the thresholds."""
        workers = list(self._workers_to_check())
        results = await asyncio.gather(*(self._probe_worker(w) for w in workers))
        still_checked = set(self._workers_to_check())  # removed meanwhile: no tracker revived for it
        for worker, reason in zip(workers, results, strict=True):
            if worker not in still_checked:
                continue
            verdict = self.tracker(worker).observe(not reason)
            if reason:
                logger.debug("health probe failed", extra={"worker": worker.worker_id, "reason": reason})
            if verdict is not None:
                self._on_verdict(worker, verdict, reason)

    async def _probe_http(self, worker: Worker) -> str:
        return await probe(self._session, worker.url, self._config.endpoint, self._config.timeout_secs)

    def start(self) -> None:
        if self._task is None and self._config.enabled:
            self._task = asyncio.create_task(self._run(), name="atom-mesh-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval_secs)
            try:
                await self.check_once()
            except Exception:  # a bug in one round must not end health checking for good
                logger.exception("health check round failed")
