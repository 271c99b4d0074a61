"""Shared pieces of the discovery tests: waiting on observable state, a steady client, fleets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from engine_sim.config import EngineConfig, WorkerSpec
from engine_sim.fleet import Fleet

FAST = EngineConfig(time_scale=0.1)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 10.0) -> Any:
    """The first truthy value of `check()`, polled until a bounded deadline (which fails
    the test, naming `what`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"never happened within {within:g}s: {what}")
        await asyncio.sleep(0.02)


async def list_workers(http: aiohttp.ClientSession, router_url: str) -> list[dict[str, Any]]:
    async with http.get(router_url + "/workers") as resp:
        assert resp.status == 200
        return (await resp.json())["workers"]


def write_atomically(path: Path, content: Any) -> None:
    """Write JSON (or text as is) the way an operator's tooling should: rename into place."""
    text = content if isinstance(content, str) else json.dumps(content)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def sim_fleet(*specs: WorkerSpec) -> AsyncIterator[Fleet]:
    fleet = Fleet(specs, FAST)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


class SteadyClient:
    """`concurrency` loops sending completions until stopped; every status is kept."""

    def __init__(self, http: aiohttp.ClientSession, router_url: str, concurrency: int = 4) -> None:
        self.http = http
        self.url = router_url + "/v1/completions"
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(concurrency)]

    async def _loop(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            body = {"model": "sim-model", "prompt": f"client {index} request {n}", "max_tokens": 4}
            n += 1
            async with self.http.post(self.url, json=body) as resp:
                self.statuses.append(resp.status)
                if resp.status != 200:
                    self.failures.append(f"{resp.status}: {await resp.text()}")
                else:
                    await resp.read()

    async def sent_more_than(self, count: int) -> bool:
        return len(self.statuses) > count

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.statuses
