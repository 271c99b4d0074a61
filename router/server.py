"""Serve the router with uvicorn (uvloop + httptools, access log off, optional TLS).

With `--prometheus-port`, metrics are also served on a listener of their own, in the
same event loop, so scrapers need not reach the inference port. That listener is plain
HTTP (as Prometheus scrapes by default); TLS covers the API port. It answers until the
process exits.

Graceful shutdown (`_DrainingServer`): uvicorn on its own, once told to exit, closes the
listener at once (new clients get a refused connection, and readiness cannot say 503),
then waits for open connections and request tasks, and finally cancels them, which cuts
a stream without telling its client. So the first SIGTERM/SIGINT first drains
(`router.drain`) with the listener still open, for at most `--shutdown-grace-period-secs`;
what is left then is cancelled and ended with an error the client can read. Only then
does uvicorn's own shutdown run, with nothing left to wait for but idle keep-alive
connections, which it closes. The process exits 0; a second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from types import FrameType
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from router.app import create_app
from router.config import RouterConfig
from router.drain import Drain
from router.logging_setup import configure_logging
from router.processes.coordinator_link import CoordinatorLink
from router.processes.supervisor import RelayProcesses, default_relay_count

logger = logging.getLogger("atom_mesh.server")

# After the grace period: how long the cancelled requests get to send their error ending,
# and how long uvicorn then waits for any other request (admin, health) still open.
_CANCELLED_ENDING_SECS = 5.0
_UVICORN_SHUTDOWN_SECS = 5


def uvicorn_config(
    app: Any,
    config: RouterConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    lifespan: Literal["on", "off"],
    tls: bool = True,
) -> uvicorn.Config:
    """uvicorn's settings for one of the router's listeners (`host`/`port` unused when
    it serves sockets it was given)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=config.log_level,
        lifespan=lifespan,
        ssl_certfile=config.tls_cert_path if tls else None,
        ssl_keyfile=config.tls_key_path if tls else None,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=_UVICORN_SHUTDOWN_SECS,
    )


# Young-generation collections per allocation count: CPython's default (700) runs one every
# few requests here, since each request allocates hundreds of short-lived objects (HTTP
# client and server, asyncio); measured +10-20% req/s with this value (README, router
# overhead). Cycles are still collected, only in larger batches.
_GC_THRESHOLD = (20_000, 50, 100)


def tune_gc() -> None:
    """Move start-up objects (modules, the app, its config) out of the collector's sight
    (`gc.freeze`), so full collections scan only what requests create, and collect young
    objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLD)


class DrainingServer(uvicorn.Server):
    """The API listener: the first SIGTERM/SIGINT drains in-flight inference requests
    before uvicorn's own shutdown (see the module docstring); a second one ends the
    process at once, by that signal."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_secs: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._grace_secs = grace_secs

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: set flags only (no logging, no awaiting). Not
        # recording the signal in uvicorn's `_captured_signals` keeps uvicorn from
        # re-raising it after the shutdown, so a drained router exits 0.
        if self.should_exit:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
            return
        self._drain.begin()
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = self._drain
        drain.begin()  # also when uvicorn stops for a reason of its own
        logger.info(
            "shutting down: draining in-flight requests",
            extra={"in_flight": drain.in_flight, "grace_period_secs": self._grace_secs},
        )
        if not await drain.wait_idle(self._grace_secs):
            logger.warning(
                "shutdown grace period over: cancelling the requests still running",
                extra={"in_flight": drain.in_flight, "grace_period_secs": self._grace_secs},
            )
            drain.expire()
            for task in list(self.server_state.tasks):
                task.cancel()
            await drain.wait_idle(_CANCELLED_ENDING_SECS)
        await super().shutdown(sockets)


class _SecondaryServer(uvicorn.Server):
    """A listener that leaves SIGINT/SIGTERM to the main server, which stops it on exit.

    (Each uvicorn server would otherwise install its own handlers, and a signal would stop
    only the server whose handlers were installed last.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _CoordinatorServer(DrainingServer):
    """The coordinator's internal listener (the relays forward every route but inference
    to it). Its shutdown first has every relay drain (SIGTERM), waits for them to exit
    (the grace period, then the cancelled requests' endings), kills any still running,
    and only then stops the router's state, which the relays' last requests still use."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_secs: float, relays: RelayProcesses) -> None:
        super().__init__(config, drain, grace_secs)
        self._relays = relays

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self._relays.kill_now()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._drain.begin()
        self._relays.terminate()
        if not await self._relays.wait(self._grace_secs + _CANCELLED_ENDING_SECS + _UVICORN_SHUTDOWN_SECS):
            logger.warning("relay processes still running after the grace period; killing them")
        self._relays.kill()
        await super().shutdown(sockets)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _serve(config: RouterConfig, relay_count: int) -> None:
    app = create_app(config)
    service = app.state.service
    tune_gc()
    if relay_count <= 1:
        main: DrainingServer = DrainingServer(
            uvicorn_config(app, config, config.host, config.port, lifespan="on"), service.drain, config.shutdown_grace_period_secs
        )
        await _with_metrics_listener(main, app, config, None)
        return
    # The public socket is the relays' (inherited by each); the coordinator serves its
    # routes on a private loopback one, and answers the relays' questions on a Unix socket.
    public = _listening_socket(config.host, config.port)
    internal = _listening_socket("127.0.0.1", 0)
    internal_url = f"http://127.0.0.1:{internal.getsockname()[1]}"
    with tempfile.TemporaryDirectory(prefix="atom-router-") as scratch:
        link = CoordinatorLink(service.decisions, service.registry)
        service.serve_relays(link)
        await link.start(os.path.join(scratch, "link.sock"))
        relays = RelayProcesses(config, relay_count, public, link.path, internal_url)
        main = _CoordinatorServer(
            uvicorn_config(app, config, lifespan="on", tls=False), service.drain, config.shutdown_grace_period_secs, relays
        )
        relays.start()
        logger.info("relay processes started", extra={"relays": relay_count, "pids": relays.pids})
        watch = asyncio.create_task(relays.watch(), name="relay-watch")
        try:
            await _with_metrics_listener(main, app, config, [internal])
        finally:
            watch.cancel()
            relays.terminate()
            relays.kill()
            await link.stop()
            public.close()


async def _with_metrics_listener(
    main: DrainingServer, app: Starlette, config: RouterConfig, sockets: list[socket.socket] | None
) -> None:
    """Serve `main`, with the `--prometheus-port` listener beside it when configured."""
    if not config.prometheus_port:
        await main.serve(sockets=sockets)
        return
    metrics_app = Starlette(routes=[Route("/metrics", app.state.service.metrics_endpoint)])
    host = config.prometheus_host or config.host
    metrics = _SecondaryServer(
        uvicorn_config(metrics_app, config, host, config.prometheus_port, lifespan="off", tls=False)
    )
    metrics_task = asyncio.create_task(metrics.serve())
    try:
        await main.serve(sockets=sockets)
    finally:
        metrics.should_exit = True
        await metrics_task


def serve(config: RouterConfig) -> int:
    """Run until SIGINT/SIGTERM; the exit status for `router.cli.main`."""
    if bool(config.tls_cert_path) != bool(config.tls_key_path):
        print("atom-router: --tls-cert-path and --tls-key-path must be given together")
        return 2
    configure_logging(config.log_level, json=config.log_json)
    import uvloop

    uvloop.run(_serve(config, config.processes or default_relay_count()))
    return 0
