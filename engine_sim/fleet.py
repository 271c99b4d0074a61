"""A fleet: N simulated workers in one event loop, sharing a KV rendezvous, plus an admin app.

The admin app (optional, its own port) reaches every worker even when one has stopped
listening: `GET /sim/workers`, `GET /sim/stats` (fleet totals and per worker),
`POST /sim/workers/{index}/faults`, `POST /sim/reset`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from engine_sim.config import EngineConfig, WorkerSpec
from engine_sim.openai_api import error_body
from engine_sim.server import SimWorker
from engine_sim.transfer import TransferHub

logger = logging.getLogger("atom_mesh.engine_sim")

_SUMMED = (
    "received",
    "completed",
    "cancelled",
    "rejected",
    "injected_errors",
    "hung",
    "died",
    "kv_failures",
    "prefill_legs",
    "decode_legs",
    "decode_only",
    "in_flight",
    "running",
    "waiting",
    "prompt_tokens",
    "cached_tokens",
    "remote_prefill_tokens",
    "generated_tokens",
    "finished_requests",
    "aborted_requests",
    "evicted_blocks",
)


class Fleet:
    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        cfg: EngineConfig | None = None,
        *,
        model: str = "sim-model",
        host: str = "127.0.0.1",
        admin_port: int | None = None,
        seed: int = 0,
        kv_events: bool = False,
    ) -> None:
        self.cfg = cfg or EngineConfig()
        self.hub = TransferHub()
        self.host = host
        self.workers = [
            SimWorker(
                i,
                spec,
                self.cfg,
                model=model,
                hub=self.hub,
                bootstrap_owner=self._bootstrap_owner,
                host=host,
                seed=seed,
                kv_events=kv_events,
            )
            for i, spec in enumerate(specs)
        ]
        self.admin_port = admin_port
        self._admin_runner: web.AppRunner | None = None

    async def start(self) -> None:
        for worker in self.workers:
            await worker.start()
        if self.admin_port is not None:
            self._admin_runner = web.AppRunner(self._admin_app(), access_log=None, shutdown_timeout=1.0)
            await self._admin_runner.setup()
            site = web.TCPSite(self._admin_runner, self.host, self.admin_port, reuse_address=True)
            await site.start()
            self.admin_port = self._admin_runner.addresses[0][1]
        for worker in self.workers:
            logger.info("simulated %s worker %d on %s (%s)", worker.spec.role, worker.index, worker.url, worker.spec.protocol)

    async def stop(self) -> None:
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await asyncio.gather(*(w.stop() for w in self.workers))

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def admin_url(self) -> str | None:
        return None if self.admin_port is None else f"http://{self.host}:{self.admin_port}"

    def by_role(self, role: str) -> list[SimWorker]:
        return [w for w in self.workers if w.spec.role == role]

    def describe(self) -> dict[str, Any]:
        """What a harness needs to point a router at this fleet (also the CLI's --fleet-file)."""
        return {"admin_url": self.admin_url, "workers": [w.info() for w in self.workers]}

    def stats(self) -> dict[str, Any]:
        per_worker = [w.snapshot() for w in self.workers]
        totals = {k: sum(s[k] for s in per_worker) for k in _SUMMED}
        totals["cache_hit_rate"] = totals["cached_tokens"] / totals["prompt_tokens"] if totals["prompt_tokens"] else 0.0
        return {"totals": totals, "workers": per_worker}

    def reset_stats(self) -> None:
        for worker in self.workers:
            worker.reset_stats()

    def _bootstrap_owner(self, addr: str) -> str | None:
        """Engine id of the worker whose bootstrap server is at `addr` ("http://host:port")."""
        try:
            port = urlsplit(addr if "://" in addr else f"http://{addr}").port
        except ValueError:
            return None
        for worker in self.workers:
            if worker.bootstrap_port is not None and worker.bootstrap_port == port:
                return worker.engine_id
        return None

    # -- admin ----------------------------------------------------------------
    def _admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/sim/workers", self._describe)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_post("/sim/reset", self._reset)
        app.router.add_get("/sim/workers/{index}/faults", self._get_faults)
        app.router.add_post("/sim/workers/{index}/faults", self._post_faults)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _describe(self, request: web.Request) -> web.Response:
        return _json(self.describe())

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json(self.stats())

    def _worker(self, request: web.Request) -> SimWorker | None:
        try:
            index = int(request.match_info["index"])
        except ValueError:
            return None
        return self.workers[index] if 0 <= index < len(self.workers) else None

    async def _get_faults(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        if worker is None:
            return _json(error_body(404, f"no worker {request.match_info['index']}; see GET /sim/workers"), 404)
        return _json(worker.faults.to_dict())

    async def _post_faults(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        if worker is None:
            return _json(error_body(404, f"no worker {request.match_info['index']}; see GET /sim/workers"), 404)
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of fault knobs")
            return _json((await worker.set_faults(changes)).to_dict())
        except (ValueError, TypeError) as exc:
            return _json(error_body(400, str(exc)), 400)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")
