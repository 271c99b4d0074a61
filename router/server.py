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
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from router.app import create_app
from router.config import RouterConfig
from router.drain import Drain
from router.logging_setup import configure_logging

logger = logging.getLogger("atom_mesh.server")

# After the grace period: how long the cancelled requests get to send their error ending,
# and how long uvicorn then waits for any other request (admin, health) still open.
_CANCELLED_ENDING_SECS = 5.0
_UVICORN_SHUTDOWN_SECS = 5


def _uvicorn_config(
    app: Starlette, config: RouterConfig, host: str, port: int, *, lifespan: Literal["on", "off"], tls: bool = True
) -> uvicorn.Config:
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


def _tune_gc() -> None:
    """Move start-up objects (modules, the app, its config) out of the collector's sight
    (`gc.freeze`), so full collections scan only what requests create, and collect young
    objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLD)


class _DrainingServer(uvicorn.Server):
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


async def _serve(config: RouterConfig) -> None:
    app = create_app(config)
    _tune_gc()
    main = _DrainingServer(
        _uvicorn_config(app, config, config.host, config.port, lifespan="on"),
        app.state.service.drain,
        config.shutdown_grace_period_secs,
    )
    if not config.prometheus_port:
        await main.serve()
        return
    metrics_app = Starlette(routes=[Route("/metrics", app.state.service.metrics_endpoint)])
    host = config.prometheus_host or config.host
    metrics = _SecondaryServer(
        _uvicorn_config(metrics_app, config, host, config.prometheus_port, lifespan="off", tls=False)
    )
    metrics_task = asyncio.create_task(metrics.serve())
    try:
        await main.serve()
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

    uvloop.run(_serve(config))
    return 0
