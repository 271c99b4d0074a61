"""Start a real vLLM CPU engine serving the `VllmEngine` gRPC protocol on a free port.

vLLM 0.32 serves smg-grpc-proto's `vllm_engine.proto` with
`python -m vllm.entrypoints.launchers.grpc_server` (the server side is the
`smg-grpc-servicer` package). It takes the same engine flags as the HTTP server, so the
engine here is configured exactly like `testbed.vllm_engine`'s (eager, float32, 1 GiB of
KV cache, unpinned with one OMP thread): token ids from both servers on one model agree.
Readiness is grpc.health.v1 `Check` answering SERVING (the servicer reports NOT_SERVING
until the engine is up).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.ports import free_port
from testbed.processes import EngineStartError, ManagedProcess
from testbed.vllm_engine import DEFAULT_READY_TIMEOUT, engine_env


def vllm_grpc_command(
    model_dir: str | Path,
    port: int,
    *,
    kv_transfer_config: dict | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line `start_vllm_grpc` runs."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.launchers.grpc_server",
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


def grpc_serving(target: str, timeout: float = 5.0) -> bool:
    """Whether grpc.health.v1 `Check` at `target` (host:port) answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_grpc_ready(proc: ManagedProcess, timeout: float = DEFAULT_READY_TIMEOUT, interval: float = 0.5) -> None:
    """Poll grpc health until SERVING; on failure stop the process and raise with its log tail."""
    target = f"{proc.host}:{proc.port}"
    started = time.monotonic()
    try:
        while not grpc_serving(target):
            code = proc.poll()
            if code is not None:
                raise EngineStartError(
                    f"{proc.name} exited with status {code} before gRPC health was SERVING.\n"
                    f"command: {' '.join(proc.cmd)}\nlog {proc.log_path} (tail):\n{proc.log_tail()}"
                )
            if time.monotonic() - started > timeout:
                raise EngineStartError(
                    f"{proc.name} not SERVING at {target} after {time.monotonic() - started:.0f}s (stopped it).\n"
                    f"command: {' '.join(proc.cmd)}\nlog {proc.log_path} (tail):\n{proc.log_tail()}"
                )
            time.sleep(interval)
    except BaseException:
        proc.stop()
        raise


def start_vllm_grpc(
    model_dir: str | Path,
    *,
    kv_transfer_config: dict | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    timeout: float = DEFAULT_READY_TIMEOUT,
    name: str = "vllm-grpc",
) -> ManagedProcess:
    """Start vLLM's gRPC server for `model_dir`; the worker URL is `grpc://127.0.0.1:<port>`.

    With `wait=True` (default) returns once gRPC health is SERVING; with `wait=False` call
    `wait_grpc_ready(proc)` later (to overlap several engines' start-ups).
    """
    port = port or free_port()
    proc = ManagedProcess(
        vllm_grpc_command(model_dir, port, kv_transfer_config=kv_transfer_config, extra_args=extra_args),
        name=name,
        port=port,
        env=engine_env(env),
    )
    if wait:
        wait_grpc_ready(proc, timeout=timeout)
    return proc
