"""The HTTP face of one simulated worker (aiohttp): OpenAI endpoints, metrics, admin knobs.

Everything that decides (parsing, P/D leg plans, faults, timing, cache) is pure code in
sibling modules; this module only moves bytes and awaits. Handler cancellation is on, so a
client that disconnects cancels its handler, which aborts the request in the engine and
counts it as `cancelled` in `/sim/stats`: the fault suite uses that to prove a router
cancels upstream work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from engine_sim.config import EngineConfig, FaultConfig, WorkerSpec
from engine_sim.engine import AsyncEngine
from engine_sim.faults import decide
from engine_sim.metrics import render_metrics
from engine_sim.openai_api import ParsedRequest, RequestError, ResponseShape, error_body, parse_request, usage
from engine_sim.pd import LegPlan, WorkerIdentity, plan_leg, prefill_answer_params
from engine_sim.scheduler import SimRequest
from engine_sim.timing import kv_transfer_seconds
from engine_sim.tokenizer import output_words, prompt_digest, word_ids
from engine_sim.transfer import KVRecord, KVTimeoutError, TransferHub

logger = logging.getLogger("atom_mesh.engine_sim")

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass
class WorkerStats:
    received: int = 0  # inference requests that reached the handler
    completed: int = 0  # answered in full
    cancelled: int = 0  # the client went away before the answer was complete
    rejected: int = 0  # bad requests (4xx)
    injected_errors: int = 0
    hung: int = 0
    died: int = 0  # connections closed by die_after_tokens
    kv_failures: int = 0  # decode legs whose KV never came or was for another prompt
    prefill_legs: int = 0
    decode_legs: int = 0
    # Plain requests a decode worker prefilled itself (no P/D transfer: the decode-only route).
    decode_only: int = 0
    in_flight: int = 0


class _Died(Exception):
    """The die_after_tokens fault closed the connection."""


class SimWorker:
    def __init__(
        self,
        index: int,
        spec: WorkerSpec,
        cfg: EngineConfig,
        *,
        model: str,
        hub: TransferHub,
        bootstrap_owner: Callable[[str], str | None],
        host: str = "127.0.0.1",
        seed: int = 0,
        kv_events: bool = False,
    ) -> None:
        self.index = index
        self.spec = spec
        self.cfg = cfg
        self.model = model
        self.host = host
        self.faults = spec.faults
        self.stats = WorkerStats()
        # The W3C `traceparent` of the last inference request (None: it had none), so a
        # harness can check that a router propagates trace context to each leg.
        self.last_traceparent: str | None = None
        self.engine = AsyncEngine(cfg, cache_events=self._publish_cache_events if kv_events else None)
        self.engine.set_paused(spec.faults.paused)
        self._kv_events = kv_events
        self._publisher: Any = None  # engine_sim.kv_events.KVEventPublisher, once started
        self._hub = hub
        self._bootstrap_owner = bootstrap_owner
        self._rng = random.Random(seed * 1_000_003 + index)
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._bootstrap_runner: web.AppRunner | None = None
        self.port = spec.port
        self.bootstrap_port = spec.bootstrap_port
        self.engine_id = ""

    # -- lifecycle ------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def identity(self) -> WorkerIdentity:
        return WorkerIdentity(self.engine_id, self.host, self.port, self.bootstrap_port)

    async def start(self) -> None:
        self.engine.start()
        self._runner = web.AppRunner(self._app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()
        self.engine_id = f"sim-{self.index}-{self.port}"
        if self._kv_events:
            from engine_sim.kv_events import KVEventPublisher  # needs pyzmq + msgspec

            self._publisher = KVEventPublisher(self.host, self.cfg.block_size)
        if self.spec.needs_bootstrap:
            self._bootstrap_runner = web.AppRunner(self._bootstrap_app(), access_log=None, shutdown_timeout=1.0)
            await self._bootstrap_runner.setup()
            site = web.TCPSite(self._bootstrap_runner, self.host, self.bootstrap_port or 0, reuse_address=True)
            await site.start()
            self.bootstrap_port = self._bootstrap_runner.addresses[0][1]

    async def _listen(self) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._runner.server, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_listening(self, listening: bool, keep: asyncio.BaseTransport | None = None) -> None:
        """Stop accepting and drop every open connection (a crashed engine), or listen again.

        `keep` is the connection of an admin request that asked for this, so it gets its answer.
        """
        if listening and self._server is None:
            await self._listen()
        elif not listening and self._server is not None:
            self._server.close()
            self._server = None
            assert self._runner is not None and self._runner.server is not None
            for conn in list(self._runner.server.connections):
                if conn.transport is not None and conn.transport is not keep:
                    conn.transport.abort()

    async def set_faults(self, changes: dict[str, Any], keep: asyncio.BaseTransport | None = None) -> FaultConfig:
        new = self.faults.updated(changes)
        if new.listening != self.faults.listening:
            await self.set_listening(new.listening, keep)
        self.engine.set_paused(new.paused)
        self.faults = new
        logger.info("worker %d (%s) faults now %s", self.index, self.url, changes)
        return new

    async def stop(self) -> None:
        await self.set_listening(False)
        for runner in (self._runner, self._bootstrap_runner):
            if runner is not None:
                await runner.cleanup()
        await self.engine.stop()
        if self._publisher is not None:
            await self._publisher.close()

    def _publish_cache_events(self, changes: list[Any]) -> None:
        if self._publisher is not None:
            self._publisher.publish(changes)

    def info(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "url": self.url,
            "port": self.port,
            "role": self.spec.role,
            "protocol": self.spec.protocol,
            "engine_id": self.engine_id,
            "bootstrap_port": self.bootstrap_port,
            "model": self.model,
            "kv_events_endpoint": self._publisher.endpoint if self._publisher else None,
            "kv_events_replay_endpoint": self._publisher.replay_endpoint if self._publisher else None,
        }

    def snapshot(self) -> dict[str, Any]:
        core = self.engine.core
        return {
            **asdict(self.stats),
            "running": self.engine.num_running,
            "waiting": self.engine.num_waiting,
            "kv_usage": core.cache.usage,
            "cached_blocks": core.cache.num_cached_blocks,
            "evicted_blocks": core.cache.evictions,
            **asdict(core.stats),
            "last_traceparent": self.last_traceparent,
        }

    # -- apps -----------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/get_server_info", self._server_info)
        app.router.add_get("/server_info", self._server_info)
        app.router.add_get("/get_model_info", self._model_info)
        app.router.add_get("/kv_event_sources", self._kv_event_sources)
        app.router.add_get("/version", self._version)
        app.router.add_get("/sim/info", self._sim_info)
        app.router.add_get("/sim/stats", self._sim_stats)
        app.router.add_post("/sim/reset", self._sim_reset)
        app.router.add_get("/sim/faults", self._get_faults)
        app.router.add_post("/sim/faults", self._post_faults)
        return app

    def _bootstrap_app(self) -> web.Application:
        """vLLM-Mooncake `/query` and SGLang's bootstrap `/route` + `/health`."""
        app = web.Application()
        app.router.add_get("/query", self._bootstrap_query)
        app.router.add_get("/route", self._bootstrap_route)
        app.router.add_put("/route", self._bootstrap_register)
        app.router.add_get("/health", self._bootstrap_health)
        return app

    # -- inference ------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, chat=True)

    async def _inference(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.stats.received += 1
        self.stats.in_flight += 1
        self.last_traceparent = request.headers.get("traceparent")
        try:
            return await self._serve(request, chat)
        except _Died:
            self.stats.died += 1
            return web.Response(status=499)  # never reaches the client: its connection is closed
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats.cancelled += 1
            raise
        finally:
            self.stats.in_flight -= 1

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            self.stats.rejected += 1
            return _error(400, "the request body is not valid JSON")
        engine_rid = f"{self.engine_id}-{next(self._ids)}"
        try:
            req = parse_request(body, chat)
            if req.model is not None and req.model != self.model:
                raise RequestError(404, f"The model `{req.model}` does not exist; this server serves `{self.model}`", "model")
            try:
                self.engine.core.check(len(req.prompt_ids), req.max_tokens)
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
            leg = plan_leg(self.spec.role, self.spec.protocol, req, self.identity, engine_rid)
            self._check_bootstrap_addr(leg)
        except RequestError as exc:
            self.stats.rejected += 1
            return _error(exc.status, exc.message, exc.param)

        decision = decide(self.faults, self._rng)
        if decision.error_status is not None:
            self.stats.injected_errors += 1
            return _error(decision.error_status, f"injected fault on simulated worker {self.index} (error_rate)")
        if decision.hang:
            self.stats.hung += 1
            await asyncio.Event().wait()  # until the client disconnects
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)

        if leg.kind == "prefill":
            self.stats.prefill_legs += 1
        elif leg.kind == "whole" and self.spec.role == "decode":
            self.stats.decode_only += 1
        elif leg.kind == "decode":
            self.stats.decode_legs += 1
            failure = await self._receive_kv(req, leg)
            if failure is not None:
                self.stats.kv_failures += 1
                return failure

        words = output_words(req.prompt_ids, leg.max_tokens)
        sim_req = SimRequest(engine_rid, req.prompt_ids, word_ids(words), remote_prefilled=leg.remote_prefilled)
        shape = ResponseShape(request_id=("chatcmpl-" if chat else "cmpl-") + engine_rid, model=self.model, chat=chat)
        if req.stream:
            response = await self._stream(request, req, sim_req, words, shape, decision.die_after_tokens, leg)
        else:
            response = await self._whole(request, req, sim_req, words, shape, decision.die_after_tokens, leg)
        self.stats.completed += 1
        return response

    def _check_bootstrap_addr(self, leg: LegPlan) -> None:
        if leg.remote_bootstrap_addr is None:
            return
        if self._bootstrap_owner(leg.remote_bootstrap_addr) != leg.remote_engine_id:
            raise RequestError(
                400,
                f"remote_bootstrap_addr {leg.remote_bootstrap_addr} is not the bootstrap server of engine "
                f"{leg.remote_engine_id}; take both from the prefill worker's GET /query",
                "kv_transfer_params",
            )

    async def _receive_kv(self, req: ParsedRequest, leg: LegPlan) -> web.Response | None:
        """Wait for the prefill leg's KV, check it is for this prompt, pay the transfer time."""
        self.engine.pending_kv += 1
        try:
            if leg.wait_key is not None:
                try:
                    record = await self._hub.wait(leg.wait_key, self.cfg.kv_wait_timeout_s)
                except KVTimeoutError as exc:
                    logger.warning("worker %d: %s", self.index, exc)
                    return _error(500, f"{exc}: the prefill leg failed or was never sent")
                if record.prompt_digest != prompt_digest(req.prompt_ids):
                    logger.warning("worker %d: KV for %r belongs to another prompt", self.index, leg.wait_key)
                    return _error(500, f"KV for {leg.wait_key!r} belongs to another prompt: the router paired the wrong legs")
            uncached = len(req.prompt_ids) - self.engine.core.cached_prefix_tokens(req.prompt_ids)
            await asyncio.sleep(kv_transfer_seconds(self.cfg, uncached))
            return None
        finally:
            self.engine.pending_kv -= 1

    def _after_prefill(self, req: ParsedRequest, sim_req: SimRequest, leg: LegPlan) -> dict[str, Any] | None:
        """Publish a finished prefill leg's KV; the vLLM serial answer's kv_transfer_params."""
        if leg.publish_key is not None:
            self._hub.publish(leg.publish_key, KVRecord(prompt_digest(req.prompt_ids), len(req.prompt_ids), self.engine_id))
        if leg.answer_params:
            return prefill_answer_params(self.identity, sim_req.request_id, sim_req.prompt_block_ids)
        return None

    async def _whole(
        self,
        request: web.Request,
        req: ParsedRequest,
        sim_req: SimRequest,
        words: list[str],
        shape: ResponseShape,
        die_after: int | None,
        leg: LegPlan,
    ) -> web.Response:
        n = 0
        async with contextlib.aclosing(self.engine.generate(sim_req)) as tokens:
            async for _event in tokens:
                if die_after is not None and n >= die_after:
                    self._die(request)
                n += 1
        params = self._after_prefill(req, sim_req, leg)
        body = shape.full(
            " ".join(words),
            "length",
            usage(len(req.prompt_ids), n, sim_req.num_cached_tokens),
            {"kv_transfer_params": params},
        )
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        req: ParsedRequest,
        sim_req: SimRequest,
        words: list[str],
        shape: ResponseShape,
        die_after: int | None,
        leg: LegPlan,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        n = 0
        async with contextlib.aclosing(self.engine.generate(sim_req)) as tokens:
            async for event in tokens:
                if die_after is not None and n >= die_after:
                    self._die(request)
                text = words[event.index] if event.index == 0 else " " + words[event.index]
                chunk = shape.chunk(text, "length" if event.finished else None, first=event.index == 0)
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                n += 1
        self._after_prefill(req, sim_req, leg)
        if req.include_usage:
            u = usage(len(req.prompt_ids), n, sim_req.num_cached_tokens)
            await response.write(b"data: " + orjson.dumps(shape.usage_chunk(u)) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _die(self, request: web.Request) -> None:
        """Close the connection now, flushing what was written (the die_after_tokens fault)."""
        if request.transport is not None:
            request.transport.close()
        raise _Died()

    # -- plain endpoints ------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        if self.faults.unhealthy:
            return _error(503, f"simulated worker {self.index} is unhealthy (fault knob)")
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            # The engine this worker's P/D protocol comes from, as that engine names itself here:
            # gateways (smg) pick their P/D protocol by it.
            "owned_by": "sglang" if self.spec.protocol == "sglang" else "vllm",
            "root": self.model,
            "max_model_len": self.cfg.max_model_len,
        }
        return _json({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        text = render_metrics(self.model, self.engine_id, self.snapshot())
        return web.Response(text=text, content_type="text/plain")

    async def _kv_event_sources(self, request: web.Request) -> web.Response:
        """vLLM's publisher settings per data-parallel rank ({} without --kv-events)."""
        if self._publisher is None:
            return _json({})
        endpoints = {"endpoint": self._publisher.endpoint, "replay_endpoint": self._publisher.replay_endpoint}
        return _json({"0": {"enable_kv_cache_events": True, "publisher": "zmq", "topic": "", **endpoints}})

    async def _server_info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "model": self.model,
                "model_path": self.model,
                "served_model_name": self.model,
                "tp_size": 1,
                "dp_size": 1,
                "disaggregation_mode": "null" if self.spec.role == "regular" else self.spec.role,
                "disaggregation_bootstrap_port": self.bootstrap_port,
                "page_size": self.cfg.block_size,
                "max_total_num_tokens": self.cfg.num_blocks * self.cfg.block_size,
            }
        )

    async def _model_info(self, request: web.Request) -> web.Response:
        return _json({"model_path": self.model, "tokenizer_path": None, "is_generation": True})

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": "atom-mesh-engine-sim"})

    async def _sim_info(self, request: web.Request) -> web.Response:
        return _json(self.info())

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return _json(self.snapshot())

    async def _sim_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json(self.snapshot())

    def reset_stats(self) -> None:
        """Zero the counters (not the cache): benchmarks reset after their warm-up."""
        in_flight = self.stats.in_flight
        self.stats = WorkerStats(in_flight=in_flight)
        self.last_traceparent = None
        self.engine.core.stats = type(self.engine.core.stats)()
        self.engine.core.cache.evictions = 0

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.to_dict())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of fault knobs")
            return _json((await self.set_faults(changes, keep=request.transport)).to_dict())
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))

    # -- bootstrap server -----------------------------------------------------
    async def _bootstrap_query(self, request: web.Request) -> web.Response:
        return _json({"0": {"engine_id": self.engine_id, "worker_addr": f"{self.host}:{self.port}"}})

    async def _bootstrap_route(self, request: web.Request) -> web.Response:
        return _json(
            {
                "attn_tp_size": 1,
                "attn_cp_size": 1,
                "dp_size": 1,
                "pp_size": 1,
                "page_size": self.cfg.block_size,
                "kv_cache_dtype": "auto",
                "follow_bootstrap_room": True,
            }
        )

    async def _bootstrap_register(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _bootstrap_health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return _json(error_body(status, message, param), status)
