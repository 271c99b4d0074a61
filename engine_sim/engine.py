"""The asyncio driver of one `EngineCore`: sleeps each step's duration and hands out tokens.

One task per engine runs steps back to back while there is work and parks on an event when
idle. Callers get a per-request queue of `TokenEvent`s; leaving `generate()` early (client
gone, fault, cancellation) aborts the request in the core so its blocks are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

from engine_sim.config import EngineConfig
from engine_sim.kv_cache import BlockRemoved, BlockStored
from engine_sim.scheduler import EngineCore, SimRequest, TokenEvent

CacheEventSink = Callable[[list[BlockStored | BlockRemoved]], None]


class AsyncEngine:
    def __init__(self, cfg: EngineConfig, cache_events: CacheEventSink | None = None) -> None:
        self.core = EngineCore(cfg, record_events=cache_events is not None)
        # Receives each step's cache changes (the KV-event publisher), when enabled.
        self._cache_events = cache_events
        self._queues: dict[str, asyncio.Queue[TokenEvent]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Requests accepted by the HTTP layer but not in the core yet (waiting for remote KV).
        self.pending_kv = 0
        # The `paused` fault: no steps run, so every request stays where it is.
        self._paused = False

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-sim-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def num_running(self) -> int:
        return len(self.core.running)

    @property
    def num_waiting(self) -> int:
        return len(self.core.waiting) + self.pending_kv

    async def generate(self, request: SimRequest) -> AsyncGenerator[TokenEvent, None]:
        """Yield the request's tokens as steps produce them; abort it if the caller stops early."""
        self.core.add(request)
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[request.request_id] = queue
        self._wake.set()
        try:
            while True:
                event = await queue.get()
                yield event
                if event.finished:
                    return
        finally:
            self._queues.pop(request.request_id, None)
            self.core.abort(request.request_id)  # no-op once finished

    async def _run(self) -> None:
        while True:
            plan = None if self._paused else self.core.schedule()
            if plan is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(plan.duration)
            for event in self.core.complete(plan):
                queue = self._queues.get(event.request_id)
                if queue is not None:
                    queue.put_nowait(event)
            if self._cache_events is not None:
                changes = self.core.cache.drain_events()
                if changes:
                    self._cache_events(changes)
