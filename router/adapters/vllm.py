"""vLLM serial P/D (NixlConnector style, also ExampleConnector): prefill, then decode.

Prefill gets the client's body with one output token, no stream and
`kv_transfer_params={"do_remote_decode": true}`; its answer's `kv_transfer_params` go to
decode exactly as returned, on the client's original body (decode's `max_tokens` is never
lowered). Connectors that move KV out of band (ExampleConnector's shared files) return no
params; decode then gets the client's body unchanged.

A decode engine (kv_consumer or kv_both) serves a request without `kv_transfer_params`
by prefilling it itself (the connector is not involved), so a decode-only plan is the
client's body sent to decode unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson

from router.adapters.base import Adapter, Upstream, expect_pair, prefill_body
from router.placement.types import PlacementPlan, Single
from router.prepare import PreparedRequest

logger = logging.getLogger("atom_mesh.dispatch")


class VllmAdapter(Adapter):
    name = "vllm"
    runs_decode_only = True

    async def send(self, plan: PlacementPlan, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        if isinstance(plan, Single):
            return await self.send_whole(plan, request, headers)
        pair = expect_pair(plan)
        answer = await self.post_leg(
            pair.prefill, request.route, prefill_body(request, {"do_remote_decode": True}), headers
        )
        params = answer.get("kv_transfer_params")
        if params is None:
            logger.debug("prefill returned no kv_transfer_params", extra={"prefill": pair.prefill.url})
            data = request.raw
        else:
            data = orjson.dumps({**request.body, "kv_transfer_params": params})
        return Upstream(pair.decode, await self.post(pair.decode, request.route, data, headers))
