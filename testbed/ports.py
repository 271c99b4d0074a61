"""Free TCP ports for the servers we start (never fixed ports: several suites share a machine)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just reported free on `host`.

    The socket is closed before returning, so a race with another process is possible but
    rare; servers started on it fail loudly (address in use) rather than silently.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
