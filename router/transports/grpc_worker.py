"""Registration, health and load of a `grpc://` worker: what `/health`, `/v1/models` and
`/metrics` are for an HTTP worker, over the worker's gRPC channel.

- engine: which protocol the worker speaks (vLLM's or SGLang's), found on its first
  probe (`router.transports.grpc_engines`);
- health: grpc.health.v1 `Check` (the servicers answer NOT_SERVING until the engine
  is up and while it is paused), so readiness and the periodic probes mean the same as
  an HTTP worker's `GET /health`;
- models: `GetModelInfo`'s served model name, as the entry `/v1/models` lists;
- load: `GetLoads`, summed over the engine's data-parallel ranks, as the load monitor's
  `EngineLoad` (what an HTTP worker's `/metrics` scrape gives).
"""

from __future__ import annotations

import grpc.aio

from router.transports.grpc_channel import GrpcChannels
from router.transports.grpc_engines import ENGINE_INFO_KEY, GrpcEngineClient, detect_engine, engine_client, engine_of
from router.workers.engine_load import EngineLoad, EngineMetricsError
from router.workers.model_list import ModelEntry, ModelListUnavailable
from router.workers.worker import Worker


class GrpcWorkerProbe:
    """The control-plane calls on gRPC workers, over the router's shared channels."""

    def __init__(self, channels: GrpcChannels) -> None:
        self.channels = channels

    def client(self, worker: Worker) -> GrpcEngineClient:
        return engine_client(worker, self.channels.channel(worker))

    async def health(self, worker: Worker, timeout_secs: float) -> str:
        """"" when the worker is SERVING, else why not (never raises). The first probe
        that reaches the server learns its engine protocol."""
        if ENGINE_INFO_KEY not in worker.engine_info:
            engine = await detect_engine(self.channels.channel(worker), timeout_secs)
            if isinstance(engine, str):
                return f"{worker.url}: {engine}"
            worker.engine_info[ENGINE_INFO_KEY] = engine.name
        return await self.client(worker).health(timeout_secs)

    async def models(self, worker: Worker, timeout_secs: float) -> list[ModelEntry]:
        """The worker's `/v1/models` entry from `GetModelInfo`; raises `ModelListUnavailable`."""
        try:
            info = await self.client(worker).model_info(timeout_secs)
        except grpc.aio.AioRpcError as err:
            raise ModelListUnavailable(f"GetModelInfo on {worker.url}: {err.code().name}: {err.details()}") from None
        name = info.served_model_name or info.model_path
        if not name:
            return []
        entry = {"id": name, "object": "model", "owned_by": engine_of(worker).name, "root": info.model_path}
        return [{**entry, "max_model_len": info.max_context_length}]

    async def load(self, worker: Worker, timeout_secs: float, sampled_at: float) -> EngineLoad:
        """`GetLoads` summed over the engine's ranks (KV usage: the fullest rank), as the
        load monitor's `EngineLoad`; a failed call raises `EngineMetricsError`."""
        try:
            reply = await self.client(worker).loads(timeout_secs)
        except grpc.aio.AioRpcError as err:
            raise EngineMetricsError(f"GetLoads on {worker.url}: {err.code().name}: {err.details()}") from None
        ranks = list(reply.loads)
        return EngineLoad(
            running=sum(r.num_running_reqs for r in ranks),
            waiting=sum(r.num_waiting_reqs for r in ranks),
            kv_usage=max((r.token_usage for r in ranks), default=0.0),
            sampled_at=sampled_at,
        )
