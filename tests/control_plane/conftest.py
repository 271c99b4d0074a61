"""A tiny real HTTP endpoint for control-plane unit tests (health and model discovery only).

Not an engine simulator: it serves only `/health` (status set by the test) and
`/v1/models`. Fault tests with real request traffic use `engine_sim`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web


@dataclass
class Endpoint:
    url: str = ""
    health_status: int = 200
    hang: bool = False  # /health never answers (probe timeout)
    models: list[str] = field(default_factory=lambda: ["tiny"])
    models_status: int = 200
    health_hits: int = 0


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()

    async def health(_: web.Request) -> web.Response:
        state.health_hits += 1
        if state.hang:
            await asyncio.Event().wait()
        return web.Response(status=state.health_status, text="ok")

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in state.models]},
            status=state.models_status,
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
