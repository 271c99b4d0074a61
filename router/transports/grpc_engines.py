"""Which token-level gRPC protocol a `grpc://` worker speaks, and the client for it.

Two engines serve smg-grpc-proto services: vLLM (`VllmEngine`) and SGLang
(`SglangScheduler`). Their servicers answer grpc.health.v1 `Check` for their own
service's full name and refuse any other with NOT_FOUND, so the router asks each known
service in turn on a worker's first readiness probe, as smg does (it tries sglang, then
vllm, ...), and keeps the answer in `worker.engine_info["grpc_engine"]` (shown by
`GET /workers`). Service names come from the published descriptors, not from strings here.

Adding an engine: a client with the calls of `GrpcEngineClient` and one `GrpcEngine` line.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smg_grpc_proto.generated import vllm_engine_pb2

from router.adapters import sglang_grpc
from router.adapters.vllm_grpc import VllmGrpcClient
from router.generation.types import GenerationChunk, GenerationRequest
from router.workers.worker import Worker

ENGINE_INFO_KEY = "grpc_engine"


class GrpcEngineClient(Protocol):
    """The calls the router makes on a gRPC worker, whatever its engine."""

    async def health(self, timeout_secs: float) -> str: ...

    async def model_info(self, timeout_secs: float) -> Any: ...

    async def loads(self, timeout_secs: float) -> Any: ...

    def kv_events(self, start_sequence_number: int = 0) -> grpc.aio.UnaryStreamCall: ...

    async def abort(self, request_id: str) -> None: ...

    def generate(self, req: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]: ...


@dataclass(frozen=True)
class GrpcEngine:
    """One engine protocol: its name (`/v1/models` owned_by), service and client."""

    name: str
    service: str
    client: Callable[[Worker, grpc.aio.Channel], GrpcEngineClient]


# In the order they are tried (SGLang first, as smg does).
ENGINES: tuple[GrpcEngine, ...] = (
    GrpcEngine("sglang", sglang_grpc.SERVICE, sglang_grpc.SglangGrpcClient),
    GrpcEngine("vllm", vllm_engine_pb2.DESCRIPTOR.services_by_name["VllmEngine"].full_name, VllmGrpcClient),
)
_BY_NAME = {engine.name: engine for engine in ENGINES}
# A worker whose engine was never probed for (built directly, not registered): the
# protocol grpc:// meant before engines were told apart.
_UNPROBED = _BY_NAME["vllm"]


def engine_of(worker: Worker) -> GrpcEngine:
    """The worker's engine as detected at registration."""
    return _BY_NAME.get(worker.engine_info.get(ENGINE_INFO_KEY, ""), _UNPROBED)


def engine_client(worker: Worker, channel: grpc.aio.Channel) -> GrpcEngineClient:
    """The client of the worker's engine protocol over its channel."""
    return engine_of(worker).client(worker, channel)


async def detect_engine(channel: grpc.aio.Channel, timeout_secs: float) -> GrpcEngine | str:
    """The engine whose service the server reports (SERVING or not yet), or why none was
    found: an unreachable server (try again later) or one that serves no known service."""
    health = health_pb2_grpc.HealthStub(channel)
    for engine in ENGINES:
        try:
            await health.Check(health_pb2.HealthCheckRequest(service=engine.service), timeout=timeout_secs)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.NOT_FOUND:
                continue
            if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                break  # no grpc.health.v1 at all: no engine of ours
            return f"gRPC health: {err.code().name}: {err.details()}"
        return engine
    return (
        "the gRPC server serves none of the engine services the router speaks ("
        + ", ".join(e.service for e in ENGINES)
        + "): start vLLM's gRPC server or SGLang with --smg-grpc-mode"
    )
