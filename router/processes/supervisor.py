"""The relay processes of one router: started with the coordinator, restarted if one dies,
stopped before it exits.

Relays are started with multiprocessing's "spawn" (a fresh interpreter, never a fork of a
process that already runs an event loop, gRPC or threads); the listening socket travels
with the start arguments (multiprocessing passes its descriptor to the child). A relay
that dies unexpectedly is logged and started again, at most once per `RESTART_SECS`
per relay; the coordinator has already released what it held (`coordinator_link`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess

from router.config import RouterConfig
from router.processes.relay import run_relay

logger = logging.getLogger("atom_mesh.processes")

RESTART_SECS = 1.0
_POLL_SECS = 0.2


def default_relay_count() -> int:
    """One relay per core this process may run on (as the Rust gateways use every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class RelayProcesses:
    def __init__(self, config: RouterConfig, count: int, listener: socket.socket, link_path: str, internal_url: str) -> None:
        self._args = (config, listener, link_path, internal_url)
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess | None] = [None] * count
        self._started_at = [0.0] * count
        self._stopping = False

    def start(self) -> None:
        for index in range(self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        config, listener, link_path, internal_url = self._args
        proc = self._context.Process(
            target=run_relay,
            args=(config, listener, link_path, internal_url, index),
            name=f"atom-router-relay-{index}",
        )
        proc.start()
        self._procs[index] = proc
        self._started_at[index] = time.monotonic()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    async def watch(self) -> None:
        """Restart relays that die while the router runs (cancel to stop watching)."""
        while True:
            await asyncio.sleep(_POLL_SECS)
            for index, proc in enumerate(self._procs):
                if self._stopping or proc is None or proc.exitcode is None:
                    continue
                if time.monotonic() - self._started_at[index] < RESTART_SECS:
                    continue
                logger.error(
                    "relay process exited; starting it again",
                    extra={"relay": index, "pid": proc.pid, "exitcode": proc.exitcode},
                )
                proc.close()
                self._spawn(index)

    def terminate(self) -> None:
        """SIGTERM every relay: each drains its own requests, as a one-process router does."""
        self._stopping = True
        for proc in self._procs:
            if proc is not None and proc.exitcode is None:
                proc.terminate()

    async def wait(self, within_secs: float) -> bool:
        """Wait for every relay to exit; False if some still run after `within_secs`."""
        deadline = time.monotonic() + within_secs
        while any(p is not None and p.exitcode is None for p in self._procs):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def kill_now(self) -> None:
        """SIGKILL every relay still running, without waiting (safe in a signal handler)."""
        self._stopping = True
        for proc in self._procs:
            if proc is not None and proc.exitcode is None and proc.pid is not None:
                os.kill(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        for proc in self._procs:
            if proc is not None and proc.exitcode is None:
                proc.kill()
        for proc in self._procs:
            if proc is not None:
                proc.join(5)
