"""The load monitor reads a real vLLM CPU engine's /metrics: requests show as running
while they generate, and the engine reads idle again once they finished."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from router.config import LoadMonitorConfig
from router.workers.load_monitor import LoadMonitor
from router.workers.worker import Worker

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(900)]


async def _poll_until(monitor: LoadMonitor, http: aiohttp.ClientSession, worker: Worker, check, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        await monitor.poll(http)
        if worker.engine_load is not None and check(worker.engine_load):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}; last sample {worker.engine_load}")


async def test_monitor_reads_running_requests_from_vllm(vllm_colocated, tiny_llama):
    worker = Worker(vllm_colocated.url)
    monitor = LoadMonitor(LoadMonitorConfig(), [worker], clock=time.monotonic)
    payload = {"model": str(tiny_llama), "prompt": "count with me", "max_tokens": 900, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as http:
        await _poll_until(monitor, http, worker, lambda s: s.requests == 0, "an idle engine")
        streams = [await http.post(vllm_colocated.url + "/v1/completions", json=payload) for _ in range(2)]
        try:
            for resp in streams:
                assert resp.status == 200
                await resp.content.readline()  # generating now
            await _poll_until(monitor, http, worker, lambda s: s.running >= 1 and s.kv_usage > 0, "running requests")
        finally:
            for resp in streams:
                await resp.read()
                resp.release()
        await _poll_until(monitor, http, worker, lambda s: s.requests == 0, "the engine idle again")
