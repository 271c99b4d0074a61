"""A relay process: the inference data path on one core, every decision asked of the
coordinator.

It accepts on the router's listening socket (inherited from the coordinator, shared by
every relay: the kernel hands each new connection to one of them), runs the same
`InferencePath` and `Dispatcher` as a one-process router with `RemoteDecisions`, its own
upstream pools and gRPC channels, its own metrics (summed into the coordinator's
/metrics) and its own tracer. Every other route (health, readiness, models, metrics, the
admin API) is forwarded to the coordinator's internal listener, so each has one answer
whichever process a client reaches.

Signals: SIGINT is ignored (Ctrl-C reaches the whole process group; the coordinator
decides), SIGTERM from the coordinator drains as a one-process router does (`router.server`).
A relay whose link drops (the coordinator died) exits at once: it cannot decide alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
from typing import Any

from router.adapters import ADAPTERS
from router.adapters.openai import OpenAIAdapter
from router.app import grpc_leg
from router.auth import Authenticator
from router.config import RouterConfig
from router.dispatch import Dispatcher, create_upstream
from router.drain import Drain
from router.errors import ApiError, AuthError
from router.inference import InferencePath
from router.logging_setup import configure_logging
from router.metrics import RouterMetrics
from router.prepare import CHAT_ROUTE, COMPLETIONS_ROUTE
from router.processes.metrics_merge import encode_families
from router.processes.relay_link import RelayLink, RemoteDecisions
from router.render import error_response
from router.tokenizer import HFTokenizer, ModelTokenizers, load_tokenizer
from router.tracing import create_tracer
from router.transports.grpc_channel import GrpcChannels
from router.transports.http_upstream import HttpUpstream, UpstreamError
from router.workers.registry import WorkerRegistry
from router.workers.worker import Worker

logger = logging.getLogger("atom_mesh.processes")

# Response headers that describe one hop, not the answer (RFC 9110 7.6.1), and the
# length, which the server sets for the body it sends.
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te"})


class Forwarder:
    """Every route but the two inference routes, answered by the coordinator: the request
    is sent on to its internal listener and its whole answer sent back."""

    def __init__(self, upstream: HttpUpstream, internal_url: str) -> None:
        self._upstream = upstream
        self._base = internal_url

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        target = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = self._base + target.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1")
            if name.lower() not in _HOP_HEADERS:
                headers[name] = v.decode("latin-1")
        try:
            response = await self._upstream.request(scope["method"], url, bytes(body), headers)
            try:
                answer = await response.read()
            except BaseException:
                response.close()
                raise
            response.release()
        except UpstreamError as exc:
            await error_response(ApiError(503, f"router coordinator unavailable ({exc!r}); retry shortly", code="not_ready"))(
                scope, receive, send
            )
            return
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items() if k not in _HOP_HEADERS]
        out.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": answer})


class RelayApp:
    """The relay's ASGI app: the inference routes here (the key checked as `RouterApp`
    does), the rest forwarded."""

    def __init__(self, inference: InferencePath, authenticator: Authenticator, forward: Forwarder) -> None:
        self._inference = inference
        self._authenticator = authenticator
        self._forward = forward
        self._routes = frozenset({CHAT_ROUTE, COMPLETIONS_ROUTE})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and path in self._routes and scope["method"] == "POST" and not scope.get("root_path"):
            try:
                self._authenticator.authorize(scope)
            except AuthError as err:
                await error_response(err)(scope, receive, send)
                return
            await self._inference.serve(path, scope, receive, send)
            return
        await self._forward(scope, receive, send)


class RelayTokenizers:
    """Tokenizers a relay did not load from its flags: the ones the coordinator fetched
    from gRPC workers, loaded from the directory it unpacked them to (named in the
    worker table), so relays tokenize as the coordinator would."""

    def __init__(self, tokenizers: ModelTokenizers, generation_config: str) -> None:
        self._tokenizers = tokenizers
        self._generation_config = generation_config

    def learn(self, worker: Worker) -> None:
        for model, directory in worker.engine_info.get("tokenizer_dirs", {}).items():
            if not self._tokenizers.has(model):
                try:
                    self._tokenizers.add(model, HFTokenizer(directory, None, self._generation_config))
                except (RuntimeError, OSError) as exc:
                    logger.warning("relay could not load a fetched tokenizer", extra={"model": model, "reason": str(exc)})


async def _run(config: RouterConfig, listener: socket.socket, link_path: str, internal_url: str, index: int) -> None:
    # Imported here: router.server imports this module's caller.
    from router.server import DrainingServer, tune_gc, uvicorn_config

    loop = asyncio.get_running_loop()
    metrics = RouterMetrics()
    registry = WorkerRegistry()
    processing = config.processing
    tokenizers = ModelTokenizers(
        load_tokenizer(config.tokenizer_path or processing.model_path, config.chat_template, processing.generation_config)
    )
    fetched = RelayTokenizers(tokenizers, processing.generation_config)
    channels = GrpcChannels()
    registry.on_removed(channels.discard)
    lost = asyncio.Event()
    link = await RelayLink.connect(
        link_path, index, registry, lambda: encode_families(metrics.registry), lost.set, on_worker=fetched.learn
    )
    await link.has_table.wait()
    tracer = create_tracer(config.tracing)
    drain = Drain()
    decisions = RemoteDecisions(link, config.admission, shared_rate_limit=bool(config.shared_state.redis_url))
    inference = InferencePath(config, tokenizers, decisions, metrics, registry, drain, tracer)
    upstream = create_upstream(config)
    adapter_cls = ADAPTERS[config.backend] if config.pd_disaggregation else OpenAIAdapter
    inference.dispatcher = Dispatcher(
        adapter_cls(upstream, tracer),
        decisions,
        config,
        metrics,
        rng=random.Random(None if config.seed is None else config.seed + index),
        tracer=tracer,
        grpc=grpc_leg(channels, tokenizers, tracer),
    )
    forward_client = HttpUpstream(connect_timeout_secs=5.0)
    app = RelayApp(inference, Authenticator(config.api_key, config.admin_api_key), Forwarder(forward_client, internal_url))
    server = DrainingServer(uvicorn_config(app, config, lifespan="off"), drain, config.shutdown_grace_period_secs)
    tune_gc()
    watch = loop.create_task(_exit_when_lost(lost, server))
    try:
        await server.serve(sockets=[listener])
    finally:
        watch.cancel()
        link.close()
        await upstream.close()
        await forward_client.close()
        await channels.close_all()
        await asyncio.to_thread(tracer.shutdown)


async def _exit_when_lost(lost: asyncio.Event, server: Any) -> None:
    await lost.wait()
    logger.error("relay lost its coordinator; exiting")
    os._exit(1)


def run_relay(config: RouterConfig, listener: socket.socket, link_path: str, internal_url: str, index: int) -> None:
    """A relay process's main (`router.processes.supervisor` starts it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.log_level, json=config.log_json)
    import uvloop

    uvloop.run(_run(config, listener, link_path, internal_url, index))
