"""The ASGI app: routes wired to prepare -> place -> dispatch -> render.

Inference routes are raw ASGI endpoints inside Starlette's router: they read the body
under the payload limit, watch for the client's disconnect while the upstream works
(cancelling it, so the engine stops), and write SSE chunks straight through. Everything
else (health, readiness, models, metrics, the admin API) is ordinary Starlette.

Start-up (lifespan): the pooled upstream session (all inference traffic and /v1/models),
the worker manager (registration with the adapter's hook, health checks; it keeps its own
small session for probes, since the admin routes need it before the loop runs), the
policies' eviction tick. Shutdown closes them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from router.adapters import ADAPTERS
from router.adapters.base import Adapter
from router.adapters.openai import OpenAIAdapter
from router.admin import admin_routes
from router.admission import AdmissionCollector, AdmissionController
from router.auth import Authenticator, AuthMiddleware
from router.config import RouterConfig
from router.dispatch import Dispatcher, Reply, create_session
from router.errors import AdmissionRejected, ApiError, AuthError
from router.kv_events import KVEventFeed
from router.logging_setup import request_id_var
from router.metrics import RouterMetrics
from router.placement.planner import Planner
from router.placement.types import PlacementPlan, RequestDescriptor
from router.policies.kv_block_index import KVBlockIndex
from router.prepare import CHAT_ROUTE, COMPLETIONS_ROUTE, PreparedRequest, payload_too_large, prepare_request
from router.render import SSE_CONTENT_TYPE, StreamWriter, error_response, header_list, send_body, send_error
from router.tokenizer import load_tokenizer
from router.workers.lifecycle import WorkerCollector, WorkerManager
from router.workers.registry import WorkerRegistry
from router.workers.worker import Role, Worker

logger = logging.getLogger("atom_mesh.app")

# Status recorded when the client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


class RouterService:
    """Everything one router instance holds; handlers are its methods."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.registry = WorkerRegistry()
        self.metrics = RouterMetrics()
        self.admission = AdmissionController(config.admission)
        self.tokenizer = load_tokenizer(config.tokenizer_path)
        rng = random.Random(config.seed)
        # The engines' KV events feed one index, read by every kv_aware pool.
        kv_index = KVBlockIndex() if config.uses_policy("kv_aware") else None
        self.planner = Planner.from_config(
            config, rng, kv_index, decode_only_capable=ADAPTERS[config.backend].runs_decode_only
        )
        self.registry.on_removed(self.planner.on_worker_removed)
        self.manager = WorkerManager(config, self.registry)
        self.metrics.registry.register(WorkerCollector(self.manager))
        self.metrics.registry.register(AdmissionCollector(self.admission))
        self.kv_events: KVEventFeed | None = None
        if kv_index is not None:
            self.kv_events = KVEventFeed(kv_index, config.kv_events_port)
            self.registry.on_removed(self.kv_events.unsubscribe)
            self.manager.add_registration_hook(self.kv_events.subscribe)
            self.metrics.registry.register(self.kv_events)
        self._rng = rng
        self.session: aiohttp.ClientSession | None = None
        self.adapter: Adapter | None = None
        self.dispatcher: Dispatcher | None = None

    # -- lifespan ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.session = create_session()
        # Without --pd-disaggregation every backend's workers are plain OpenAI servers.
        adapter_cls = ADAPTERS[self.config.backend] if self.config.pd_disaggregation else OpenAIAdapter
        self.adapter = adapter_cls(self.session)
        adapter = self.adapter
        self.manager.add_registration_hook(lambda worker, _session: adapter.prepare_worker(worker))
        self.dispatcher = Dispatcher(
            adapter, self.place, self.config, self.metrics, clock=self.manager.clock, rng=self._rng
        )
        await self.manager.start()
        evictor = asyncio.create_task(self._evict_forever(), name="policy-eviction")
        try:
            yield
        finally:
            evictor.cancel()
            await asyncio.gather(evictor, return_exceptions=True)
            await self.manager.stop()
            if self.kv_events is not None:
                await self.kv_events.stop()
            await self.session.close()

    async def _evict_forever(self) -> None:
        interval = max(1, self.config.policy_config.eviction_interval_secs)
        while True:
            await asyncio.sleep(interval)
            self.planner.evict(self.manager.clock())

    def place(self, descriptor: RequestDescriptor) -> PlacementPlan:
        return self.planner.plan(
            descriptor, self.registry, pd=self.config.pd_disaggregation, now=self.manager.clock()
        )

    # -- inference ----------------------------------------------------------------------

    async def inference(self, route: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        model_label = "unknown"
        status = 500
        token = None
        try:
            raw = await self._read_body(receive, headers)
            prepared = prepare_request(
                route,
                raw,
                headers,
                request_id_headers=self.config.request_id_headers,
                session_header=self.config.policy_config.session_header,
                tokenizer=self.tokenizer,
            )
            token = request_id_var.set(prepared.descriptor.request_id)
            model_label = self._model_label(prepared.descriptor.model)
            try:
                slot = await self.admission.acquire()
            except AdmissionRejected as exc:
                raise ApiError.from_typed(exc) from None
            try:
                status = await self._serve(prepared, receive, send)
            finally:
                slot.release()
        except ApiError as err:
            status = err.status
            await send_error(send, err)
        finally:
            self.metrics.request_done(route, model_label, status, time.perf_counter() - started)
            if token is not None:
                request_id_var.reset(token)

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.config.max_payload_size
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise payload_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _serve(self, prepared: PreparedRequest, receive: Receive, send: Send) -> int:
        """Respond, unless the client leaves first: then cancel everything upstream.

        The response runs in this task; one watcher task cancels it if the client goes
        away. (Running the response in a task of its own and waiting on both costs two more
        task steps and a wait per request, measurable on the hot path.)
        """
        task = asyncio.current_task()
        assert task is not None
        watching = True
        writer = StreamWriter(send)

        def client_gone(watcher: asyncio.Future[None]) -> None:
            # A client that closes right after reading `[DONE]` got its whole answer: let the
            # relay finish (the upstream's end, metrics) instead of counting it as cut off.
            if watching and not watcher.cancelled() and not writer.delivered:
                task.cancel()

        gone = asyncio.ensure_future(_client_disconnect(receive))
        gone.add_done_callback(client_gone)
        try:
            return await self._respond(prepared, send, writer)
        except asyncio.CancelledError:
            if not gone.done() or gone.cancelled():
                raise  # cancelled from outside (shutdown), not by the watcher
            task.uncancel()
            logger.info("client disconnected; cancelled upstream")
            return CLIENT_CLOSED
        finally:
            watching = False
            gone.cancel()

    async def _respond(self, prepared: PreparedRequest, send: Send, writer: StreamWriter) -> int:
        assert self.dispatcher is not None
        try:
            reply = await self.dispatcher.run(prepared)
        except ApiError as err:
            await send_error(send, err)
            return err.status
        except Exception:  # a bug, not bad input or a bad upstream: still one clean answer
            logger.exception("internal error while dispatching")
            err = ApiError(500, "internal router error; see the router's log for this request id", code="internal_error")
            await send_error(send, err)
            return err.status
        try:
            extra = [*reply.headers, ("x-request-id", prepared.descriptor.request_id)]
            if not reply.streaming:
                await send_body(send, reply.status, reply.body, header_list(reply.content_type, extra))
                return reply.status
            await self._relay_stream(prepared.route, reply, writer, extra)
            return reply.status
        finally:
            reply.close()

    async def _relay_stream(self, route: str, reply: Reply, writer: StreamWriter, extra: list[tuple[str, str]]) -> None:
        started = time.perf_counter()
        await writer.start(reply.status, header_list(SSE_CONTENT_TYPE, [("cache-control", "no-cache"), *extra]))
        first = last = 0.0
        events = 0
        try:
            async for chunk in reply.chunks():
                last = time.perf_counter()
                if not events:
                    first = last
                    self.metrics.child(self.metrics.ttft, route).observe(first - started)
                events += chunk.count(b"data:")
                await writer.write(chunk)
        except ApiError as err:
            logger.warning("stream failed", extra={"reason": err.message})
            await writer.fail(err)
            return
        await writer.finish()
        tokens = events - 2  # minus the first event and [DONE]
        if tokens > 0:
            self.metrics.child(self.metrics.tpot, route).observe((last - first) / tokens)

    def _model_label(self, model: str | None) -> str:
        """A bounded label: only models some worker serves (clients can send any string)."""
        if model is None:
            return "default"
        return model if any(model in w.models for w in self.registry) else "unknown"

    # -- other routes ---------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    def usable(self) -> bool:
        now = self.manager.clock()
        roles = (Role.PREFILL, Role.DECODE) if self.config.pd_disaggregation else (Role.REGULAR,)
        return all(any(w.role is r and w.accepts_new_requests(now) for w in self.registry) for r in roles)

    async def readiness(self, _request: Request) -> Response:
        if self.usable():
            return Response(b'{"status":"ready"}', media_type="application/json")
        need = "a ready prefill and a ready decode worker" if self.config.pd_disaggregation else "a ready worker"
        return error_response(ApiError(503, f"not ready: waiting for {need}; see GET /workers", code="not_ready"))

    async def models(self, _request: Request) -> Response:
        """Union of the models of the workers that answer now; a dead worker is skipped."""
        now = self.manager.clock()
        workers = [w for w in self.registry if w.accepts_new_requests(now)]
        answers = await asyncio.gather(*(self._worker_models(w) for w in workers))
        seen: dict[str, dict[str, Any]] = {}
        for entries in answers:
            for entry in entries:
                seen.setdefault(entry["id"], entry)
        return Response(orjson.dumps({"object": "list", "data": list(seen.values())}), media_type="application/json")

    async def _worker_models(self, worker: Worker) -> list[dict[str, Any]]:
        assert self.session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.health.timeout_secs)
            async with self.session.get(worker.url + "/v1/models", timeout=timeout) as resp:
                if resp.status != 200:
                    return []
                data = orjson.loads(await resp.read()).get("data") or []
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, orjson.JSONDecodeError, AttributeError):
            logger.info("model list unavailable", extra={"worker": worker.url})
            return []
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def metrics_endpoint(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)


class RouterApp(Starlette):
    """Starlette, with the two inference routes taken before its middleware stack.

    Why: on a router whose upstream answers in microseconds, Starlette's error and
    exception middleware, the auth middleware's header parsing and route matching cost a
    measurable share of each request. Inference requests (POST to one of the two paths)
    get the same key check (`Authenticator.authorize`, the auth middleware's own) and go
    straight to the service; everything else, including a wrong method on those paths
    (405), takes the ordinary Starlette path, which routes the same handler.
    """

    def __init__(self, service: RouterService, authenticator: Authenticator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._authenticator = authenticator
        self._service = service
        self._inference_routes = frozenset({CHAT_ROUTE, COMPLETIONS_ROUTE})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if (
            scope["type"] == "http"
            and path in self._inference_routes
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            try:
                self._authenticator.authorize(scope)
            except AuthError as err:
                await error_response(err)(scope, receive, send)
                return
            await self._service.inference(path, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _InferenceRoute:
    """A raw ASGI endpoint (Starlette routes to it without wrapping it in a Request); used
    when a request does not take `RouterApp`'s fast path (a root path is set)."""

    def __init__(self, service: RouterService, route: str) -> None:
        self.service = service
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.service.inference(self.route, scope, receive, send)


async def _client_disconnect(receive: Receive) -> None:
    """Return when the client closes the connection (the body was already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(config: RouterConfig) -> RouterApp:
    """The router's ASGI app for `config` (workers register in the background at start)."""
    service = RouterService(config)
    routes = [
        Route(CHAT_ROUTE, _InferenceRoute(service, CHAT_ROUTE), methods=["POST"]),
        Route(COMPLETIONS_ROUTE, _InferenceRoute(service, COMPLETIONS_ROUTE), methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/liveness", service.health, methods=["GET"]),
        Route("/readiness", service.readiness, methods=["GET"]),
        Route("/metrics", service.metrics_endpoint, methods=["GET"]),
        *admin_routes(service.manager, error_response),
    ]
    authenticator = Authenticator(config.api_key, config.admin_api_key)
    app = RouterApp(service, authenticator, routes=routes, lifespan=service.lifespan)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, render_error=error_response)
    app.state.service = service
    return app
