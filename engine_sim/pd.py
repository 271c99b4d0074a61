"""What a request asks of this worker under its role and P/D protocol (pure).

`plan_leg` reads the protocol fields of a parsed request and says: how many tokens to
generate, which KV rendezvous key to wait for before decoding (decode legs), which key
to publish after prefilling (prefill legs), and what `kv_transfer_params` to answer
with. Field names follow docs/protocols.md exactly; a request missing what
its protocol requires is a 400 that names the missing field. A vLLM decode worker serves a
plain request (no `do_remote_prefill`) by prefilling it itself, as vLLM's kv_consumer does;
an SGLang P/D server refuses any request without a bootstrap room, as SGLang does.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from engine_sim.openai_api import ParsedRequest, RequestError

# SGLang's marker for a fake transfer (warm-up, health checks): no KV moves.
FAKE_BOOTSTRAP_HOST = "2.2.2.2"


@dataclass(frozen=True)
class WorkerIdentity:
    engine_id: str
    host: str
    port: int
    bootstrap_port: int | None


@dataclass(frozen=True)
class LegPlan:
    kind: str  # "whole" | "prefill" | "decode"
    max_tokens: int
    wait_key: Hashable | None = None  # decode: KV to wait for
    publish_key: Hashable | None = None  # prefill: KV to announce when done
    remote_prefilled: bool = False
    # Builds P's answer `kv_transfer_params` from its engine request id (vLLM serial only).
    answer_params: bool = False
    # A vllm-mooncake decode leg names the prefill engine and its bootstrap address; the
    # worker checks that they belong together (a router must take both from `/query`).
    remote_engine_id: str | None = None
    remote_bootstrap_addr: str | None = None


def plan_leg(role: str, protocol: str, req: ParsedRequest, me: WorkerIdentity, engine_request_id: str) -> LegPlan:
    if role == "regular":
        return LegPlan("whole", req.max_tokens)
    if protocol == "sglang":
        return _sglang(role, req, me)
    kv = req.kv_transfer_params or {}
    if role == "prefill":
        if not kv.get("do_remote_decode"):
            return LegPlan("whole", req.max_tokens)  # a kv_producer serves plain requests too
        if protocol == "vllm":
            return LegPlan("prefill", 1, publish_key=("vllm", me.engine_id, engine_request_id), answer_params=True)
        transfer_id = kv.get("transfer_id")
        if transfer_id is None:
            raise RequestError(400, "vllm-mooncake prefill needs kv_transfer_params.transfer_id", "kv_transfer_params")
        return LegPlan("prefill", 1, publish_key=("mooncake", me.engine_id, str(transfer_id)))
    # decode (a vLLM kv_consumer)
    if kv.get("do_remote_decode"):
        raise RequestError(
            400,
            "this is a decode worker (kv_consumer): it cannot serve a prefill leg (do_remote_decode); "
            "send prefill legs to a prefill worker",
            "kv_transfer_params",
        )
    if not kv.get("do_remote_prefill"):
        # Like vLLM's kv_consumer: a plain request is prefilled here, on this worker's own
        # prefix cache and compute (conditional disaggregation's decode-only route).
        return LegPlan("whole", req.max_tokens)
    if protocol == "vllm":
        missing = [k for k in ("remote_engine_id", "remote_request_id") if kv.get(k) is None]
        if missing:
            raise RequestError(
                400, f"kv_transfer_params lacks {missing}: forward the prefill answer's params unchanged", "kv_transfer_params"
            )
        key = ("vllm", str(kv["remote_engine_id"]), str(kv["remote_request_id"]))
        return LegPlan("decode", req.max_tokens, wait_key=key, remote_prefilled=True)
    missing = [k for k in ("transfer_id", "remote_engine_id", "remote_bootstrap_addr") if kv.get(k) is None]
    if missing:
        raise RequestError(400, f"vllm-mooncake decode needs kv_transfer_params {missing}", "kv_transfer_params")
    key = ("mooncake", str(kv["remote_engine_id"]), str(kv["transfer_id"]))
    return LegPlan(
        "decode",
        req.max_tokens,
        wait_key=key,
        remote_prefilled=True,
        remote_engine_id=str(kv["remote_engine_id"]),
        remote_bootstrap_addr=str(kv["remote_bootstrap_addr"]),
    )


def _sglang(role: str, req: ParsedRequest, me: WorkerIdentity) -> LegPlan:
    if not req.has_bootstrap_room:
        raise RequestError(400, f"bootstrap_room is required on a {role} server (SGLang P/D)", "bootstrap_room")
    fake = req.bootstrap_host == FAKE_BOOTSTRAP_HOST
    if role == "prefill":
        key = None if fake else ("sglang", me.bootstrap_port, req.bootstrap_room)
        return LegPlan("prefill", 1, publish_key=key)
    if fake:
        return LegPlan("decode", req.max_tokens, remote_prefilled=True)
    if not req.bootstrap_host or req.bootstrap_port is None:
        raise RequestError(400, "decode legs need bootstrap_host and bootstrap_port of the prefill server", "bootstrap_port")
    key = ("sglang", req.bootstrap_port, req.bootstrap_room)
    return LegPlan("decode", req.max_tokens, wait_key=key, remote_prefilled=True)


def prefill_answer_params(me: WorkerIdentity, engine_request_id: str, block_ids: list[int]) -> dict[str, Any]:
    """The `kv_transfer_params` a vLLM (NIXL-style) prefill answers with."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": block_ids,
        "remote_engine_id": me.engine_id,
        "remote_request_id": engine_request_id,
        "remote_host": me.host,
        "remote_port": me.port,
        "tp_size": 1,
    }
