"""SGLang P/D: the same bootstrap fields on both legs, both legs sent at once.

Both bodies get `bootstrap_host` (prefill's host), `bootstrap_port` (prefill's bootstrap
port; null lets the server use its own default) and `bootstrap_room` (a random 63-bit
integer shared by the two legs). A completions batch gets arrays, one room per prompt.
The client gets decode's answer; a prefill error fails the request (SGLang's own Python
balancer returns 200 then, which hides lost work), and the sibling leg is cancelled.
With `return_logprob`, prefill's `meta_info.input_token_logprobs` are merged in front of
decode's, as SGLang's gateways do.

A decode-mode server rejects a request without a bootstrap room (400), so it cannot
prefill on its own: `runs_decode_only` stays False and SGLang pools always pair.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import orjson

from router.adapters.base import Adapter, LegFailure, Upstream, expect_pair, run_both
from router.placement.types import PlacementPlan
from router.prepare import PreparedRequest
from router.transports.http_upstream import UpstreamError
from router.workers.worker import Worker

_rooms = random.SystemRandom()


def bootstrap_fields(prefill: Worker, batch_size: int) -> dict[str, Any]:
    """The fields both legs carry; arrays (one distinct room per prompt) for a batch."""
    if batch_size == 1:
        return {
            "bootstrap_host": prefill.host,
            "bootstrap_port": prefill.bootstrap_port,
            "bootstrap_room": _rooms.getrandbits(63),
        }
    return {
        "bootstrap_host": [prefill.host] * batch_size,
        "bootstrap_port": [prefill.bootstrap_port] * batch_size,
        "bootstrap_room": [_rooms.getrandbits(63) for _ in range(batch_size)],
    }


def merge_input_logprobs(prefill: dict[str, Any], decode: dict[str, Any]) -> dict[str, Any]:
    """Put prefill's input-token logprobs in front of decode's (decode computed none for the prompt)."""
    p_meta, d_meta = prefill.get("meta_info"), decode.get("meta_info")
    if isinstance(p_meta, dict) and isinstance(d_meta, dict):
        p_lp = p_meta.get("input_token_logprobs")
        if isinstance(p_lp, list):
            d_meta["input_token_logprobs"] = p_lp + list(d_meta.get("input_token_logprobs") or [])
    return decode


class SglangAdapter(Adapter):
    name = "sglang"

    async def send(self, plan: PlacementPlan, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        pair = expect_pair(plan)
        body = {**request.body, **bootstrap_fields(pair.prefill, request.batch_size)}
        data = orjson.dumps(body)
        p_body = {k: v for k, v in body.items() if k != "stream_options"}
        p_body["stream"] = False

        async def decode() -> Upstream:
            return Upstream(pair.decode, await self.post(pair.decode, request.route, data, headers))

        p_answer, upstream = await run_both(self.post_leg(pair.prefill, request.route, p_body, headers), decode())
        if request.body.get("return_logprob") and not request.descriptor.stream and upstream.response.status == 200:
            upstream.body = await self._merged_body(upstream, p_answer)
        return upstream

    async def _merged_body(self, upstream: Upstream, p_answer: dict[str, Any]) -> bytes:
        try:
            raw = await upstream.response.read()
        except UpstreamError as exc:
            upstream.response.close()
            raise LegFailure(upstream.worker, f"decode worker {upstream.worker.url} dropped the connection: {exc!r}") from exc
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
        return orjson.dumps(merge_input_logprobs(p_answer, decoded)) if isinstance(decoded, dict) else raw
