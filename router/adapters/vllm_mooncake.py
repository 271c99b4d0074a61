"""vLLM's in-tree MooncakeConnector: both legs at once, joined by a router-made transfer id.

Decode needs prefill's engine id, which prefill's bootstrap server publishes at
`GET http://<prefill host>:<bootstrap port>/query` as `{"<dp_rank>": {"engine_id": ...}}`;
it is read once per worker and cached (dropped again when that prefill fails, since a
restarted engine has a new id). Decode waits up to 480 s for KV that a failed prefill
never sends, so a prefill failure cancels decode at once.

Without `kv_transfer_params` (no `do_remote_prefill`) the connector reports no remote
tokens and decode prefills locally, so a decode-only plan is the client's body sent to
decode unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import orjson

from router.adapters.base import Adapter, LegFailure, Upstream, expect_pair, prefill_body, run_both
from router.placement.types import PlacementPlan, Single
from router.prepare import PreparedRequest
from router.workers.worker import Worker

# vLLM's VLLM_MOONCAKE_BOOTSTRAP_PORT default, used when a prefill worker names no port.
DEFAULT_BOOTSTRAP_PORT = 8998


def bootstrap_addr(worker: Worker) -> str:
    host = f"[{worker.host}]" if ":" in worker.host else worker.host
    return f"http://{host}:{worker.bootstrap_port or DEFAULT_BOOTSTRAP_PORT}"


class VllmMooncakeAdapter(Adapter):
    name = "vllm-mooncake"
    runs_decode_only = True

    async def engine_id(self, worker: Worker) -> str:
        """Prefill's Mooncake engine id (DP rank 0), cached in `worker.engine_info`."""
        cached = worker.engine_info.get("mooncake_engine_id")
        if cached:
            return cached
        url = bootstrap_addr(worker) + "/query"
        data = await self.get_json(worker, url)
        try:
            entry = data["0"] if "0" in data else next(iter(data.values()))
            engine_id = str(entry["engine_id"])
        except (TypeError, KeyError, StopIteration):
            raise LegFailure(worker, f"GET {url} gave no engine_id: {data!r}", status=502) from None
        worker.engine_info["mooncake_engine_id"] = engine_id
        return engine_id

    async def send(self, plan: PlacementPlan, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        if isinstance(plan, Single):
            return await self.send_whole(plan, request, headers)
        pair = expect_pair(plan)
        engine_id = await self.engine_id(pair.prefill)
        transfer_id = f"xfer-{uuid.uuid4().hex}"
        p_body = prefill_body(request, {"do_remote_decode": True, "transfer_id": transfer_id})
        d_body = {
            **request.body,
            "kv_transfer_params": {
                "do_remote_prefill": True,
                "transfer_id": transfer_id,
                "remote_engine_id": engine_id,
                "remote_bootstrap_addr": bootstrap_addr(pair.prefill),
            },
        }

        async def decode() -> Upstream:
            return Upstream(pair.decode, await self.post(pair.decode, request.route, orjson.dumps(d_body), headers))

        try:
            _, upstream = await run_both(self.post_leg(pair.prefill, request.route, p_body, headers), decode())
        except LegFailure as exc:
            if exc.worker is pair.prefill:
                pair.prefill.engine_info.pop("mooncake_engine_id", None)
            raise
        return upstream
