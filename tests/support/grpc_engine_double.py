"""A scripted `VllmEngine` gRPC server on a loopback port, for router tests without an engine.

It is a real grpc.aio server speaking smg-grpc-proto's `vllm_engine.proto` (plus
grpc.health.v1, which registration needs), so the router's channels, cancellation and
`Abort` calls are the real ones; only the engine is scripted. It answers the way vLLM's
servicer does where the router depends on it: a stream is DELTA chunks and a final
`GenerateComplete` repeating the last delta; a request with `kv_transfer_params_json`
`{"do_remote_decode": true}` answers with the params a prefill engine returns.

Each `Generate` is recorded (`requests`), each `Abort` too (`aborts`); `mode` scripts the
next answers: "ok", "unavailable" / "invalid" (the call fails with that status), "hang"
(the call waits until cancelled), "first_chunk_then_hang" (a stream sends one chunk, then
waits until cancelled). `started` and `aborted` are events tests wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import orjson
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from smg_grpc_proto.generated import vllm_engine_pb2, vllm_engine_pb2_grpc

from testbed.ports import free_port

MODEL = "double-model"


def output_ids(request: vllm_engine_pb2.GenerateRequest) -> list[int]:
    """The tokens the double generates for `request`: a function of the prompt, so a test
    can tell which prompt an answer was for."""
    n = request.sampling_params.max_tokens if request.sampling_params.HasField("max_tokens") else 4
    last = request.tokenized.input_ids[-1] if request.tokenized.input_ids else 0
    return [(last + i + 1) % 1000 for i in range(n)]


def kv_params(request: vllm_engine_pb2.GenerateRequest) -> dict[str, Any] | None:
    if not request.HasField("kv_transfer_params_json"):
        return None
    params = orjson.loads(request.kv_transfer_params_json)
    assert isinstance(params, dict)
    return params


class VllmEngineDouble(vllm_engine_pb2_grpc.VllmEngineServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.requests: list[vllm_engine_pb2.GenerateRequest] = []
        self.aborts: list[str] = []
        self.started = asyncio.Event()
        self.aborted = asyncio.Event()

    def prefill_answer(self, request: vllm_engine_pb2.GenerateRequest) -> dict[str, Any]:
        """The kv_transfer_params this double returns to a prefill leg."""
        return {
            "do_remote_prefill": True,
            "transfer_id": f"{self.name}/{request.request_id}",
            "remote_host": "127.0.0.1",
            "remote_port": 5610,
            "remote_num_tokens": len(request.tokenized.input_ids),
        }

    async def Generate(
        self, request: vllm_engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vllm_engine_pb2.GenerateResponse]:
        self.requests.append(request)
        self.started.set()
        if self.mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is shutting down")
        if self.mode == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.name}: prompt too long for this model")
        if self.mode == "hang":
            await asyncio.Event().wait()  # until the caller cancels
        ids = output_ids(request)
        n_prompt = len(request.tokenized.input_ids)
        params = kv_params(request)
        answer_params = self.prefill_answer(request) if params and params.get("do_remote_decode") else None
        cached = n_prompt if params and params.get("do_remote_prefill") else 0
        complete = vllm_engine_pb2.GenerateComplete(
            output_ids=ids if not request.stream else ids[-1:],
            finish_reason="length",
            prompt_tokens=n_prompt,
            completion_tokens=len(ids),
            cached_tokens=cached,
        )
        if answer_params is not None:
            complete.kv_transfer_params_json = orjson.dumps(answer_params).decode()
        if request.stream:
            for i, token in enumerate(ids):
                chunk = vllm_engine_pb2.GenerateStreamChunk(
                    token_ids=[token], prompt_tokens=n_prompt, completion_tokens=1, cached_tokens=cached
                )
                yield vllm_engine_pb2.GenerateResponse(chunk=chunk)
                if i == 0 and self.mode == "first_chunk_then_hang":
                    await asyncio.Event().wait()
        yield vllm_engine_pb2.GenerateResponse(complete=complete)

    async def Abort(
        self, request: vllm_engine_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> vllm_engine_pb2.AbortResponse:
        self.aborts.extend(request.request_ids)
        self.aborted.set()
        return vllm_engine_pb2.AbortResponse()

    async def GetModelInfo(
        self, request: vllm_engine_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vllm_engine_pb2.GetModelInfoResponse:
        return vllm_engine_pb2.GetModelInfoResponse(served_model_name=MODEL, model_path=MODEL, max_context_length=1024)


@contextlib.asynccontextmanager
async def engine_doubles(*names: str) -> AsyncIterator[list[tuple[str, VllmEngineDouble]]]:
    """One double per name, each its own server on a free port: `[(grpc_url, double)]`."""
    servers: list[grpc.aio.Server] = []
    out: list[tuple[str, VllmEngineDouble]] = []
    try:
        for name in names:
            server = grpc.aio.server()
            double = VllmEngineDouble(name)
            vllm_engine_pb2_grpc.add_VllmEngineServicer_to_server(double, server)
            health_servicer = health.aio.HealthServicer()
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            port = free_port()
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            servers.append(server)
            out.append((f"grpc://127.0.0.1:{port}", double))
        yield out
    finally:
        for server in servers:
            await server.stop(grace=None)
