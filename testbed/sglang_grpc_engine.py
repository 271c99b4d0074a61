"""Start a real SGLang CPU server serving the `SglangScheduler` gRPC protocol on a free port.

SGLang 0.5.23 serves smg-grpc-proto's `sglang_scheduler.proto` when started with
`--smg-grpc-mode` (`python -m sglang.launch_server`, the same launcher as the HTTP server;
the server side is the `smg-grpc-servicer` package, which the SGLang venv needs beside
grpcio, grpcio-health-checking, grpcio-reflection, protobuf and smg-grpc-proto). The gRPC
server listens on `--port`; its HTTP sidecar (metrics, profiling) on
`--smg-http-sidecar-port`, given a free port here so it never collides with another
engine. `--grpc-port` is the same port: in this (legacy) mode SGLang derives an unused
gRPC port of `--port` + 10000 and refuses to start when that passes 65535, so a free
port above 55535 failed start-up (seen in CI). `--skip-server-warmup`: the servicer's warm-up sends the fixed token ids
123..890, past the tiny model's 643-token vocabulary, and the scheduler dies on them
(`IndexError: index out of range in self` in the embedding; seen here). Everything else
is `testbed.sglang_engine`'s command line (CPU engine, torch-native attention, the test
shims), so the gRPC and HTTP servers answer alike on one model. Readiness is
grpc.health.v1 `Check` for the scheduler service answering SERVING (the servicer
reports NOT_SERVING until the scheduler is up).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.sglang_engine import DEFAULT_READY_TIMEOUT, SGLANG_PYTHON, sglang_available, sglang_command, sglang_env

# The scheduler service's full name (smg-grpc-proto's sglang_scheduler.proto).
SCHEDULER_SERVICE = "sglang.grpc.scheduler.SglangScheduler"
# What SGLang's gRPC mode imports besides SGLang itself.
GRPC_MODULES = ("smg_grpc_servicer.sglang", "smg_grpc_proto", "grpc", "grpc_health", "grpc_reflection")


def sglang_grpc_available() -> str | None:
    """None if the SGLang venv can run the gRPC server, else why not (a pytest skip reason)."""
    reason = sglang_available()
    if reason:
        return reason
    check = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    done = subprocess.run(
        [str(SGLANG_PYTHON), "-c", check, *GRPC_MODULES], env={**sglang_env(), "PATH": "/usr/bin:/bin"}, timeout=60
    )
    if done.returncode != 0:
        return (
            f"SGLang's gRPC mode needs {', '.join(GRPC_MODULES)} in {SGLANG_PYTHON.parent.parent}: "
            "pip install smg-grpc-servicer there (its grpcio, grpcio-health-checking, grpcio-reflection, "
            "protobuf and smg-grpc-proto with it)"
        )
    return None


def sglang_grpc_command(model_dir: str | Path, port: int, *, extra_args: Sequence[str] = ()) -> list[str]:
    """The command line `start_sglang_grpc` runs: the HTTP server's, in gRPC mode."""
    return sglang_command(
        model_dir, port, extra_args=[
            "--smg-grpc-mode",
            "--grpc-port",
            str(port),
            "--smg-http-sidecar-port",
            str(free_port()),
            "--skip-server-warmup",
            *extra_args,
        ],
    )


def grpc_scheduler_serving(target: str, timeout: float = 5.0) -> bool:
    """Whether grpc.health.v1 `Check` for the scheduler service at `target` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SCHEDULER_SERVICE), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_sglang_grpc(
    model_dir: str | Path,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = DEFAULT_READY_TIMEOUT,
    name: str = "sglang-grpc",
) -> ManagedProcess:
    """Start SGLang's gRPC server for `model_dir` and wait until it is SERVING; the worker
    URL is `grpc://127.0.0.1:<port>`."""
    reason = sglang_grpc_available()
    if reason:
        raise RuntimeError(reason)
    port = port or free_port()
    proc = ManagedProcess(sglang_grpc_command(model_dir, port, extra_args=extra_args), name=name, port=port, env=sglang_env(env))
    target = f"127.0.0.1:{port}"
    proc.wait_ready(lambda: grpc_scheduler_serving(target), f"gRPC health of {SCHEDULER_SERVICE} at {target}", timeout=timeout)
    return proc
