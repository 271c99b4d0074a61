"""Start a real vLLM CPU engine serving the `VllmEngine` gRPC protocol on a free port.

vLLM 0.32 serves smg-grpc-proto's `vllm_engine.proto` with
`python -m vllm.entrypoints.launchers.grpc_server` (the server side is the
`smg-grpc-servicer` package). It takes the same engine flags as the HTTP server, so the
engine here is configured exactly like `testbed.vllm_engine`'s (eager, float32, 1 GiB of
KV cache, unpinned with one OMP thread): token ids from both servers on one model agree.
Readiness is grpc.health.v1 `Check` answering SERVING (the servicer reports NOT_SERVING
until the engine is up).

`start_vllm_grpc_pd_fleet` starts engines that can be both ends of a P/D pair and also
serve requests co-located: AtomKVConnector as `kv_both` over Mooncake TCP on loopback
(a request without `kv_transfer_params` never touches the connector), and KV events for
`kv_aware`, so one set of engines serves P/D, co-located and KV-aware tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.vllm_engine import (
    DEFAULT_READY_TIMEOUT,
    GRPC_SERVER,
    atom_kv_transfer_config,
    engine_env,
    vllm_command,
)


def vllm_grpc_command(
    model_dir: str | Path,
    port: int,
    *,
    kv_transfer_config: dict | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line `start_vllm_grpc` runs: the HTTP engine's, with the gRPC server."""
    return vllm_command(
        model_dir, port, kv_transfer_config=kv_transfer_config, extra_args=extra_args, server=GRPC_SERVER
    )


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
    proc.wait_ready(lambda: grpc_serving(target), f"gRPC health at {target}", timeout=timeout, interval=interval)


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


def kv_events_args(port: int) -> list[str]:
    """`--kv-events-config` publishing on `port`. The host must be a wildcard: with a plain
    host vLLM connects its publisher instead of binding it, and the servicer's relay (which
    subscribes on loopback) never gets an event."""
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{port}"}
    return ["--kv-events-config", json.dumps(config)]


def start_vllm_grpc_pd_fleet(
    model_dir: str | Path, count: int = 2, *, timeout: float = DEFAULT_READY_TIMEOUT, name: str = "vllm-grpc-kv-both"
) -> list[ManagedProcess]:
    """`count` gRPC engines started at once (their start-ups overlap), each with
    AtomKVConnector as `kv_both` on its own side-channel port and KV events on its own
    port; returns when all are SERVING. If one fails to start, all are stopped."""
    procs: list[ManagedProcess] = []
    try:
        for i in range(count):
            procs.append(
                start_vllm_grpc(
                    model_dir,
                    kv_transfer_config=atom_kv_transfer_config("kv_both", free_port()),
                    extra_args=kv_events_args(free_port()),
                    wait=False,
                    name=f"{name}-{i}",
                )
            )
        for proc in procs:
            wait_grpc_ready(proc, timeout=timeout)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs
