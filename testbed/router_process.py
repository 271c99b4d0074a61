"""Start the atom-mesh router (`python -m router`) as a real HTTP server on a free port."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from testbed.ports import free_port
from testbed.processes import ManagedProcess


def start_router(
    *cli_args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    name: str = "router",
) -> ManagedProcess:
    """Run `python -m router --host 127.0.0.1 --port <free> *cli_args`; return when /health is 200.

    `cli_args` are the router's own flags, e.g. `"--pd-disaggregation", "--backend", "vllm",
    "--prefill", p.url, "--decode", d.url`. A router that exits (bad flags) raises
    `EngineStartError` with its output.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "router", "--host", "127.0.0.1", "--port", str(port), *cli_args]
    proc = ManagedProcess(cmd, name=name, port=port, env=env)
    proc.wait_http_ready("/health", timeout=timeout)
    return proc
