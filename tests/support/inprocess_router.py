"""An in-process router on a real loopback port, for tests against recording upstreams.

The app runs under uvicorn in the test's event loop (real HTTP, real disconnects), with
fast bring-up and tiny backoffs so tests take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import uvicorn

from router.app import RouterService, create_app
from router.config import HealthCheckConfig, RetryConfig, RouterConfig, WorkerSpec
from testbed.ports import free_port


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the test process owns those)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningRouter:
    url: str
    service: RouterService
    http: aiohttp.ClientSession

    @property
    def workers(self) -> list[Any]:
        return list(self.service.registry)

    async def post(self, path: str, body: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.url + path, json=body, **kwargs)


def make_config(
    *,
    workers: list[WorkerSpec],
    backend: str = "openai",
    pd: bool | None = None,
    **overrides: Any,
) -> RouterConfig:
    """A router config tuned for tests: instant bring-up, millisecond backoffs, no probes."""
    pd = backend != "openai" if pd is None else pd
    config = RouterConfig(
        backend=backend,
        pd_disaggregation=pd,
        workers=workers,
        policy="round_robin",
        retry=RetryConfig(max_retries=3, initial_backoff_ms=1, max_backoff_ms=5, jitter_factor=0.1),
        health=HealthCheckConfig(interval_secs=3600, timeout_secs=2),
        worker_startup_check_interval=0.05,
        worker_startup_timeout_secs=10,
        seed=7,
    )
    return replace(config, **overrides)


@contextlib.asynccontextmanager
async def running_router(
    config: RouterConfig, *, wait_ready: bool = True, tracer_provider: Any = None
) -> AsyncIterator[RunningRouter]:
    """`tracer_provider`: an OpenTelemetry SDK `TracerProvider` the router traces into."""
    app = create_app(config, tracer_provider=tracer_provider)
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("router server exited during start-up")
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            if wait_ready:
                for _ in range(500):
                    async with http.get(url + "/readiness") as resp:
                        if resp.status == 200:
                            break
                    await asyncio.sleep(0.02)
                else:
                    raise RuntimeError("router never became ready")
            yield RunningRouter(url, app.state.service, http)
    finally:
        server.should_exit = True
        await task


def regular(*urls: str) -> list[WorkerSpec]:
    return [WorkerSpec(url=u) for u in urls]


def pd_workers(prefill: list[tuple[str, int | None]], decode: list[str]) -> list[WorkerSpec]:
    return [WorkerSpec(url=u, role="prefill", bootstrap_port=p) for u, p in prefill] + [
        WorkerSpec(url=u, role="decode") for u in decode
    ]


def loads_are_zero(router: RunningRouter) -> bool:
    return all(w.in_flight_requests == 0 and w.in_flight_tokens == 0 for w in router.workers)




async def metrics_with(router: RunningRouter, needle: str, attempts: int = 200) -> str:
    """The router's /metrics once `needle` shows up (requests are counted just after their
    last byte went out, so a scrape right after an answer may be early)."""
    text = ""
    for _ in range(attempts):
        async with router.http.get(router.url + "/metrics") as resp:
            text = await resp.text()
        if needle in text:
            break
        await asyncio.sleep(0.02)
    return text
