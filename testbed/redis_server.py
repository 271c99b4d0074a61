"""Start a throwaway `redis-server` (Debian's) on a free loopback port, nothing persisted.

For the router replicas' shared state (`--redis-url`): tests and the replica benchmark
start their own, so no run depends on, or leaves anything in, a system Redis.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from dataclasses import dataclass

from testbed.ports import free_port
from testbed.processes import EngineStartError, ManagedProcess


def redis_server_binary() -> str | None:
    """Path of `redis-server`, or None when it is not installed (apt-get install redis-server)."""
    return shutil.which("redis-server")


@dataclass
class RedisServer:
    proc: ManagedProcess
    port: int
    _dir: tempfile.TemporaryDirectory[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.stop(grace=5.0)
        self._dir.cleanup()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(timeout: float = 30.0) -> RedisServer:
    """A fresh redis-server (no RDB, no AOF, its own temp dir); returns once it answers PING.

    Raises `EngineStartError` (with its log tail) if it is missing, exits or never answers."""
    binary = redis_server_binary()
    if binary is None:
        raise EngineStartError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="atom-redis-")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir.name]
    proc = ManagedProcess(cmd, name="redis", port=port)
    deadline = time.monotonic() + timeout
    while not _answers_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            workdir.cleanup()
            raise EngineStartError(f"redis-server did not answer PING on port {port}.\nlog (tail):\n{proc.log_tail()}")
        time.sleep(0.05)
    return RedisServer(proc, port, workdir)
