"""In-process simulated fleets for the simulator's own tests (fast: no subprocess)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from engine_sim.config import EngineConfig, WorkerSpec
from engine_sim.fleet import Fleet

# Ten times faster than real time; tests never assert on durations.
FAST = EngineConfig(time_scale=0.1, kv_wait_timeout_s=5.0)


@asynccontextmanager
async def running_fleet(*specs: WorkerSpec, cfg: EngineConfig = FAST, **kwargs: Any) -> AsyncIterator[Fleet]:
    fleet = Fleet(specs, cfg, **kwargs)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
def fleet_factory() -> Callable[..., Any]:
    return running_fleet
