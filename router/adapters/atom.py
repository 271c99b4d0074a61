"""ROCm ATOM relay: prefill, then decode with prefill's KV params plus the prefill topology.

At registration the router reads each prefill worker's `GET /kv_transfer_info`
(`tp_size`, `dp_size`, `kv_role`, `handshake_port`). Prefill's answer carries
`kv_transfer_params`; the router adds `remote_dp_size`, `remote_tp_size` and
`remote_dp_rank` and forwards the rest unchanged to decode, on the client's body.

Unverified against a real ATOM engine (it needs ROCm GPUs); the wire format follows
ATOM's published router and is exercised against recorded ATOM-like responses.

`runs_decode_only` stays False: ATOM's published protocol always relays through a
kv_producer, and whether a kv_consumer ATOM engine prefills a plain request locally is
not verified, so ATOM pools always pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from router.adapters.base import Adapter, LegFailure, Upstream, expect_pair, prefill_body
from router.placement.types import PlacementPlan
from router.prepare import PreparedRequest
from router.workers.worker import Role, Worker


class AtomAdapter(Adapter):
    name = "atom"

    async def prepare_worker(self, worker: Worker) -> None:
        if worker.role is Role.PREFILL:
            await self.transfer_info(worker)

    async def transfer_info(self, worker: Worker) -> dict[str, Any]:
        """Prefill's `/kv_transfer_info`, read once and kept in `worker.engine_info`."""
        info = worker.engine_info.get("kv_transfer_info")
        if info is None:
            info = await self.get_json(worker, worker.url + "/kv_transfer_info")
            if not isinstance(info, dict) or info.get("kv_role") not in (None, "kv_producer", "kv_both"):
                raise LegFailure(
                    worker,
                    f"{worker.url}/kv_transfer_info says {info!r}: start the prefill engine with kv_role kv_producer",
                    status=502,
                )
            worker.engine_info["kv_transfer_info"] = info
        return info

    async def send(self, plan: PlacementPlan, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        pair = expect_pair(plan)
        info = await self.transfer_info(pair.prefill)
        answer = await self.post_leg(
            pair.prefill,
            request.route,
            prefill_body(request, {"do_remote_decode": True, "do_remote_prefill": False}),
            headers,
        )
        params = answer.get("kv_transfer_params")
        if not isinstance(params, dict):
            raise LegFailure(
                pair.prefill,
                f"prefill worker {pair.prefill.url} returned no kv_transfer_params; is it an ATOM kv_producer?",
                status=502,
            )
        params = {
            **params,
            "remote_dp_size": info.get("dp_size", 1),
            "remote_tp_size": info.get("tp_size", 1),
            "remote_dp_rank": params.get("dp_rank", 0),
        }
        data = orjson.dumps({**request.body, "kv_transfer_params": params})
        return Upstream(pair.decode, await self.post(pair.decode, request.route, data, headers))
