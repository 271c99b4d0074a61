"""The ASGI app: the routes, and what one router instance holds and starts.

The two inference routes are `router.inference.InferencePath` (prepare -> place ->
dispatch -> render), taken by `RouterApp` before Starlette's middleware. Everything else
(health, readiness, models, metrics, the admin API) is ordinary Starlette.

Start-up (lifespan): the pooled upstream client (`router.transports.http_upstream`: every
HTTP inference leg; health, /v1/models, metrics scrapes and discovery keep aiohttp),
the worker manager (registration with the adapter's hook, health checks; it keeps its own
small session for probes, since the admin routes need it before the loop runs), worker
discovery (`router.discovery`: a watched file, Kubernetes pods), the load monitor
(scrapes the engines' /metrics with the manager's session), the replicas' shared state
(`--redis-url`, router.shared_state), the policies' eviction tick.
Shutdown closes them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

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
from router.decisions import LocalDecisions
from router.discovery.service import DiscoveryService
from router.dispatch import Dispatcher, create_upstream
from router.drain import Drain
from router.errors import ApiError, AuthError, ShuttingDown
from router.inference import InferencePath
from router.kv_events import KVEventFeed
from router.metrics import RouterMetrics
from router.placement.planner import Planner
from router.placement.types import PlacementPlan, RequestDescriptor
from router.policies.kv_block_index import KVBlockIndex
from router.prepare import CHAT_ROUTE, COMPLETIONS_ROUTE
from router.processes.metrics_merge import encode_families, merge
from router.processes.metrics_merge import render as render_merged
from router.render import error_response
from router.shared_state.replica_state import ReplicaState
from router.tokenizer import ModelTokenizers, load_tokenizer
from router.tracing import Tracer, create_tracer
from router.transports.grpc_channel import GrpcChannels, grpc_available
from router.transports.http_upstream import HttpUpstream
from router.workers.collector import WorkerCollector
from router.workers.lifecycle import WorkerManager
from router.workers.load_monitor import LoadMonitor
from router.workers.model_list import ModelEntry, ModelListUnavailable
from router.workers.registry import WorkerRegistry
from router.workers.worker import Role, Worker

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from router.processes.coordinator_link import CoordinatorLink
    from router.transports.grpc_leg import GrpcLeg
    from router.transports.grpc_worker import GrpcWorkerProbe

logger = logging.getLogger("atom_mesh.app")


def grpc_probe(channels: GrpcChannels) -> GrpcWorkerProbe | None:
    """Health and models of grpc:// workers, when the `grpc` extra is installed (without
    it no grpc:// worker passes validation, so none needs them)."""
    if not grpc_available():
        return None
    from router.transports.grpc_worker import GrpcWorkerProbe

    return GrpcWorkerProbe(channels)


def grpc_leg(channels: GrpcChannels, tokenizers: ModelTokenizers, tracer: Tracer) -> GrpcLeg | None:
    """The dispatch leg of grpc:// workers, with the codec that renders their answers
    (with the model's tokenizer: chats and text, router.generation; without: token ids)."""
    if not grpc_available():
        return None
    from router.transports.grpc_leg import GrpcLeg
    from router.transports.openai_codec import OpenAICodec

    return GrpcLeg(channels, OpenAICodec(tokenizers), tracer)


class RouterService:
    """Everything one router instance holds; the non-inference handlers are its methods.

    `tracer_provider`: an OpenTelemetry SDK provider to trace into (embedders, tests);
    without one, tracing follows `config.tracing` (see router.tracing.create_tracer)."""

    def __init__(self, config: RouterConfig, tracer_provider: TracerProvider | None = None) -> None:
        self.config = config
        self.tracer = create_tracer(config.tracing, tracer_provider)
        self.registry = WorkerRegistry()
        self.metrics = RouterMetrics()
        # With --redis-url, what replicas share (rate limit bucket, cache_aware decisions).
        self.replica_state = ReplicaState.from_config(config)
        rate_limiter = self.replica_state.rate_limiter if self.replica_state else None
        self.admission = AdmissionController(config.admission, rate_limiter=rate_limiter)
        processing = config.processing
        self.tokenizer = load_tokenizer(
            config.tokenizer_path or processing.model_path, config.chat_template, processing.generation_config
        )
        # Per model; without a configured tokenizer, filled from gRPC workers as they register.
        self.tokenizers = ModelTokenizers(self.tokenizer)
        rng = random.Random(config.seed)
        # The engines' KV events feed one index, read by every kv_aware pool.
        kv_index = KVBlockIndex() if config.uses_policy("kv_aware") else None
        self.planner = Planner.from_config(
            config, rng, kv_index, decode_only_capable=ADAPTERS[config.backend].runs_decode_only
        )
        self.registry.on_removed(self.planner.on_worker_removed)
        if self.replica_state is not None:
            self.replica_state.share_trees(self.registry, self.planner, tokenized=self.tokenizer is not None)
        # One gRPC channel per grpc:// worker, shared by dispatch, health and KV events.
        self.grpc_channels = GrpcChannels()
        self.registry.on_removed(self.grpc_channels.discard)
        self.manager = WorkerManager(config, self.registry, grpc_probe=grpc_probe(self.grpc_channels))
        if self.tokenizer is None and not processing.disable_tokenizer_autoload and grpc_available():
            from router.transports.grpc_tokenizer import TokenizerFetcher

            fetcher = TokenizerFetcher(
                self.tokenizers, self.grpc_channels, processing.tokenizer_cache_dir, processing.generation_config
            )
            self.manager.add_registration_hook(fetcher)
        self.discovery = DiscoveryService(config, self.manager)
        self.metrics.registry.register(WorkerCollector(self.manager))
        self.metrics.registry.register(AdmissionCollector(self.admission))
        self.load_monitor = LoadMonitor(
            config.load_monitor, self.registry, self.manager.clock, grpc_probe=self.manager.grpc_probe
        )
        self.kv_events: KVEventFeed | None = None
        if kv_index is not None:
            self.kv_events = KVEventFeed(kv_index, config.kv_events_port, self.grpc_channels)
            self.registry.on_removed(self.kv_events.unsubscribe)
            self.manager.add_registration_hook(self.kv_events.subscribe)
            self.metrics.registry.register(self.kv_events)
        self._rng = rng
        # Graceful shutdown (router.server drives it): readiness and the inference path read it.
        self.drain = Drain()
        # Admission, placement with its load hold, breaker outcomes: in this process.
        self.decisions = LocalDecisions(self.admission, self.place, self.manager.clock)
        self.inference = InferencePath(
            config, self.tokenizers, self.decisions, self.metrics, self.registry, self.drain, self.tracer
        )
        self.upstream: HttpUpstream | None = None
        self.adapter: Adapter | None = None
        # Set when relay processes carry the data path (router.processes).
        self._relays: CoordinatorLink | None = None

    def serve_relays(self, link: CoordinatorLink) -> None:
        """Answer relay processes' decisions through `link`: /metrics then adds their
        samples to this process's, and each worker that registers reaches them at once."""
        self._relays = link

        async def push(_worker: Worker, _session: object) -> None:
            link.push_table()

        self.manager.add_registration_hook(push)

    # -- lifespan ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.upstream = create_upstream(self.config)
        # Without --pd-disaggregation every backend's workers are plain OpenAI servers.
        adapter_cls = ADAPTERS[self.config.backend] if self.config.pd_disaggregation else OpenAIAdapter
        self.adapter = adapter_cls(self.upstream, self.tracer)
        adapter = self.adapter
        self.manager.add_registration_hook(lambda worker, _session: adapter.prepare_worker(worker))
        self.inference.dispatcher = Dispatcher(
            adapter,
            self.decisions,
            self.config,
            self.metrics,
            rng=self._rng,
            tracer=self.tracer,
            grpc=grpc_leg(self.grpc_channels, self.tokenizers, self.tracer),
        )
        await self.manager.start()
        await self.discovery.start()
        self.load_monitor.start(self.manager.session)
        if self.replica_state is not None:
            self.replica_state.start()
        evictor = asyncio.create_task(self._evict_forever(), name="policy-eviction")
        try:
            yield
        finally:
            evictor.cancel()
            await asyncio.gather(evictor, return_exceptions=True)
            await self.load_monitor.stop()
            await self.discovery.stop()
            await self.manager.stop()
            if self.replica_state is not None:
                await self.replica_state.close()
            if self.kv_events is not None:
                await self.kv_events.stop()
            await self.grpc_channels.close_all()
            await self.upstream.close()
            await asyncio.to_thread(self.tracer.shutdown)  # flushes spans still queued for export

    async def _evict_forever(self) -> None:
        interval = max(1, self.config.policy_config.eviction_interval_secs)
        while True:
            await asyncio.sleep(interval)
            self.planner.evict(self.manager.clock())

    def place(self, descriptor: RequestDescriptor) -> PlacementPlan:
        return self.planner.plan(
            descriptor, self.registry, pd=self.config.pd_disaggregation, now=self.manager.clock()
        )

    # -- other routes ---------------------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    def usable(self) -> bool:
        now = self.manager.clock()
        roles = (Role.PREFILL, Role.DECODE) if self.config.pd_disaggregation else (Role.REGULAR,)
        return all(any(w.role is r and w.accepts_new_requests(now) for w in self.registry) for r in roles)

    async def readiness(self, _request: Request) -> Response:
        if self.drain.draining:
            return error_response(ShuttingDown("shutting down: finishing in-flight requests, taking no new ones"))
        if self.usable():
            return Response(b'{"status":"ready"}', media_type="application/json")
        need = "a ready prefill and a ready decode worker" if self.config.pd_disaggregation else "a ready worker"
        return error_response(ApiError(503, f"not ready: waiting for {need}; see GET /workers", code="not_ready"))

    async def models(self, _request: Request) -> Response:
        """Union of the models of the workers that answer now; a dead worker is skipped."""
        now = self.manager.clock()
        workers = [w for w in self.registry if w.accepts_new_requests(now)]
        answers = await asyncio.gather(*(self._worker_models(w) for w in workers))
        seen: dict[str, ModelEntry] = {}
        for entries in answers:
            for entry in entries:
                seen.setdefault(entry["id"], entry)
        return Response(orjson.dumps({"object": "list", "data": list(seen.values())}), media_type="application/json")

    async def _worker_models(self, worker: Worker) -> list[ModelEntry]:
        try:
            return await self.manager.worker_models(worker)
        except ModelListUnavailable as exc:
            logger.info("model list unavailable", extra={"worker": worker.url, "reason": str(exc)})
            return []

    async def metrics_endpoint(self, _request: Request) -> Response:
        if self._relays is None:
            return Response(self.metrics.render(), media_type=self.metrics.content_type)
        samples = [encode_families(self.metrics.registry), *await self._relays.relay_metrics()]
        return Response(render_merged(merge(samples)), media_type=self.metrics.content_type)


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
        self._inference = service.inference
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
            await self._inference.serve(path, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _InferenceRoute:
    """A raw ASGI endpoint (Starlette routes to it without wrapping it in a Request); used
    when a request does not take `RouterApp`'s fast path (a root path is set)."""

    def __init__(self, inference: InferencePath, route: str) -> None:
        self.inference = inference
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.inference.serve(self.route, scope, receive, send)


def create_app(config: RouterConfig, *, tracer_provider: TracerProvider | None = None) -> RouterApp:
    """The router's ASGI app for `config` (workers register in the background at start);
    `tracer_provider` as in `RouterService`."""
    service = RouterService(config, tracer_provider)
    routes = [
        Route(CHAT_ROUTE, _InferenceRoute(service.inference, CHAT_ROUTE), methods=["POST"]),
        Route(COMPLETIONS_ROUTE, _InferenceRoute(service.inference, COMPLETIONS_ROUTE), methods=["POST"]),
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
