"""Serve the router with uvicorn (uvloop + httptools, access log off, optional TLS).

With `--prometheus-port`, metrics are also served on a listener of their own, in the
same event loop, so scrapers need not reach the inference port. That listener is plain
HTTP (as Prometheus scrapes by default); TLS covers the API port.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from router.app import create_app
from router.config import RouterConfig
from router.logging_setup import configure_logging


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
    main = uvicorn.Server(_uvicorn_config(app, config, config.host, config.port, lifespan="on"))
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
