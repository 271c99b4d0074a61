"""The load monitor: every interval, read each worker's `/metrics` into `Worker.engine_load`.

One task scrapes all workers concurrently, each scrape bounded by a timeout, and waits
for the round before starting the next, so a slow engine never piles up scrapes. A
failed scrape keeps the worker's last sample until it is `STALE_AFTER_INTERVALS`
intervals old, then drops it: one lost scrape on a busy machine does not blind the
router, but a dead exporter does not keep steering traffic with old numbers. Policies
and overload protection read only `Worker.engine_load`, so they never see a stale one.

Scrape failures are logged once when a worker starts failing and once when it recovers
(at info level), not every second.

Wiring (router/app.py): `LoadMonitor(config.load_monitor, registry, clock)`, then
`start(session)` after the worker manager started (its session), `await stop()` at
shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import aiohttp

from router.config import LoadMonitorConfig
from router.workers.engine_load import EngineLoad, EngineMetricsError, parse_engine_load
from router.workers.worker import Worker, WorkerState

logger = logging.getLogger("atom_mesh.load_monitor")

# A sample older than this many intervals is dropped (after that many failed scrapes).
STALE_AFTER_INTERVALS = 3
# Scrapes get at least this long to answer, even with a shorter interval.
MIN_SCRAPE_TIMEOUT_SECS = 1.0


def still_fresh(sample: EngineLoad | None, now: float, interval_secs: float) -> EngineLoad | None:
    """`sample` while it is younger than `STALE_AFTER_INTERVALS` intervals, else None."""
    if sample is None or now - sample.sampled_at > STALE_AFTER_INTERVALS * interval_secs:
        return None
    return sample


class LoadMonitor:
    """Polls the engines' own load numbers onto their `Worker` objects."""

    def __init__(
        self, config: LoadMonitorConfig, workers: Iterable[Worker], clock: Callable[[], float]
    ) -> None:
        self.config = config
        self._workers = workers
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failing: dict[str, str] = {}  # worker id -> why its last scrape failed

    def start(self, session: aiohttp.ClientSession) -> None:
        """Start polling (no-op when monitoring is disabled)."""
        if self.config.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(session), name="load-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self, session: aiohttp.ClientSession) -> None:
        interval = self.config.interval_secs
        while True:
            started = self._clock()
            await self.poll(session)
            await asyncio.sleep(max(0.0, interval - (self._clock() - started)))

    async def poll(self, session: aiohttp.ClientSession) -> None:
        """One round: scrape every worker that may take requests, concurrently."""
        polled = [w for w in self._workers if w.state in (WorkerState.READY, WorkerState.NOT_READY, WorkerState.DRAINING)]
        await asyncio.gather(*(self._update(session, w) for w in polled))
        ids = {w.worker_id for w in polled}
        self._failing = {wid: why for wid, why in self._failing.items() if wid in ids}

    async def _update(self, session: aiohttp.ClientSession, worker: Worker) -> None:
        try:
            sample = await self._scrape(session, worker)
        except (aiohttp.ClientError, TimeoutError, EngineMetricsError, UnicodeDecodeError) as exc:
            reason = str(exc) or type(exc).__name__
            if worker.worker_id not in self._failing:
                logger.info(
                    "engine load scrape failed; its load falls back to the router's own counts "
                    "once the last sample is stale",
                    extra={"worker": worker.url, "reason": reason},
                )
            self._failing[worker.worker_id] = reason
            worker.engine_load = still_fresh(worker.engine_load, self._clock(), self.config.interval_secs)
            return
        if self._failing.pop(worker.worker_id, None) is not None:
            logger.info("engine load scrape works again", extra={"worker": worker.url})
        worker.engine_load = sample
        worker.in_flight_at_sample = worker.in_flight_requests

    async def _scrape(self, session: aiohttp.ClientSession, worker: Worker) -> EngineLoad:
        timeout = aiohttp.ClientTimeout(total=max(self.config.interval_secs, MIN_SCRAPE_TIMEOUT_SECS))
        async with session.get(worker.url + "/metrics", timeout=timeout) as resp:
            if resp.status != 200:
                raise EngineMetricsError(f"GET /metrics answered {resp.status}")
            text = await resp.text()
        return parse_engine_load(text, self._clock())
