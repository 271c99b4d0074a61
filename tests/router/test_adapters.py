"""Each engine protocol's wire behaviour, against recording upstreams through a real router."""

from __future__ import annotations

import asyncio

import pytest

from router.adapters import ADAPTERS
from router.adapters.base import Adapter
from router.adapters.sglang import merge_input_logprobs
from router.config import DisaggConfig
from tests.support.inprocess_router import loads_are_zero, make_config, pd_workers, running_router
from tests.support.recording_upstream import (
    after,
    completion_body,
    hang,
    json_reply,
    text_reply,
    upstreams,
)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 7}
COMPLETION = {"model": "tiny", "prompt": "hello", "max_tokens": 7}

# These tests exercise the pair legs of each protocol: vLLM pools would otherwise send
# the tiny prompts decode-only (tests/unit/test_disagg_decider.py covers that choice).
ALWAYS_PAIR = DisaggConfig(always_pair=True)


def test_every_backend_name_loads_its_adapter() -> None:
    assert "vllm-mooncake" in ADAPTERS and "tgi" not in ADAPTERS
    for name in ADAPTERS:
        assert issubclass(ADAPTERS[name], Adapter), name
    with pytest.raises(KeyError, match="choose one of: vllm, vllm-mooncake, sglang, atom, openai"):
        ADAPTERS["tgi"]


# -- vLLM serial ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_vllm_serial_prefill_then_decode_with_returned_params(stream: bool) -> None:
    params = {
        "do_remote_prefill": True,
        "remote_block_ids": [1, 2],
        "remote_engine_id": "E",
        "remote_host": "h",
        "remote_port": 5,
    }
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm", disagg=ALWAYS_PAIR)
        async with running_router(config) as router:
            p.script("/v1/chat/completions", json_reply(completion_body(chat=True, kv_transfer_params=params)))
            body = {**CHAT, "stream": stream, "stream_options": {"include_usage": True}} if stream else CHAT
            resp = await router.post("/v1/chat/completions", body)
            assert resp.status == 200
            await resp.read()
            assert resp.headers["x-atom-prefill-worker"] == p.url
            assert resp.headers["x-atom-decode-worker"] == d.url
            (p_rec,), (d_rec,) = p.requests(), d.requests()
            assert p_rec.json["max_tokens"] == 1 and p_rec.json["max_completion_tokens"] == 1
            assert p_rec.json["stream"] is False and "stream_options" not in p_rec.json
            assert p_rec.json["kv_transfer_params"] == {"do_remote_decode": True}
            assert p_rec.finished  # prefill answered before decode was asked
            assert d_rec.json == {**body, "kv_transfer_params": params}  # original max_tokens, exact params
            assert loads_are_zero(router)


async def test_vllm_serial_prefill_without_params_sends_decode_the_client_body() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm", disagg=ALWAYS_PAIR)
        async with running_router(config) as router:
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 200
            assert d.requests()[0].json == COMPLETION


async def test_vllm_serial_prefill_client_error_is_returned_not_retried() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm", disagg=ALWAYS_PAIR)
        async with running_router(config) as router:
            p.script(
                "/v1/completions",
                json_reply({"error": {"message": "prompt too long", "type": "BadRequestError", "code": 400}}, 400),
            )
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 400
            err = (await resp.json())["error"]
            assert "prompt too long" in err["message"] and p.url in err["message"]
            assert len(p.requests()) == 1 and d.requests() == []
            assert loads_are_zero(router)


# -- vLLM MooncakeConnector ---------------------------------------------------------------


async def test_vllm_mooncake_concurrent_legs_share_transfer_id() -> None:
    async with upstreams("p", "d", "bootstrap") as (p, d, boot):
        boot.set_default("/query", json_reply({"0": {"engine_id": "engine-P", "worker_addr": {"0": {"0": "x"}}}}))
        config = make_config(workers=pd_workers([(p.url, boot.port)], [d.url]), backend="vllm-mooncake", disagg=ALWAYS_PAIR)
        async with running_router(config) as router:
            for _ in range(2):
                # Prefill answers only once decode's leg arrived: a serial router would deadlock.
                p.script(
                    "/v1/completions",
                    after(lambda: d.wait_for("/v1/completions", len(p.requests())), json_reply(completion_body(chat=False))),
                )
                resp = await router.post("/v1/completions", COMPLETION)
                assert resp.status == 200, await resp.text()
            p_recs, d_recs = p.requests(), d.requests()
            for p_rec, d_rec in zip(p_recs, d_recs, strict=True):
                tid = p_rec.json["kv_transfer_params"]["transfer_id"]
                assert p_rec.json["kv_transfer_params"] == {"do_remote_decode": True, "transfer_id": tid}
                assert p_rec.json["max_tokens"] == 1 and p_rec.json["stream"] is False
                assert d_rec.json == {
                    **COMPLETION,
                    "kv_transfer_params": {
                        "do_remote_prefill": True,
                        "transfer_id": tid,
                        "remote_engine_id": "engine-P",
                        "remote_bootstrap_addr": f"http://127.0.0.1:{boot.port}",
                    },
                }
            assert p_recs[0].json["kv_transfer_params"]["transfer_id"] != p_recs[1].json["kv_transfer_params"]["transfer_id"]
            assert len(boot.requests("/query")) == 1  # engine id cached per worker
            assert loads_are_zero(router)


async def test_vllm_mooncake_prefill_failure_cancels_decode() -> None:
    async with upstreams("p", "d", "bootstrap") as (p, d, boot):
        boot.set_default("/query", json_reply({"0": {"engine_id": "engine-P"}}))
        config = make_config(workers=pd_workers([(p.url, boot.port)], [d.url]), backend="vllm-mooncake", disagg=ALWAYS_PAIR)
        config.retry.enabled = False
        async with running_router(config) as router:
            d.script("/v1/completions", hang())
            p.script("/v1/completions", after(lambda: d.wait_for("/v1/completions"), text_reply("engine crashed", 500)))
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 500
            assert "engine crashed" in (await resp.json())["error"]["message"]
            (d_rec,) = d.requests()
            await asyncio.wait_for(d_rec.done.wait(), 10)
            assert d_rec.cancelled  # decode is not left waiting for KV that never comes
            assert loads_are_zero(router)


# -- SGLang -----------------------------------------------------------------------------


async def test_sglang_room_shared_and_legs_concurrent() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, 8998)], [d.url]), backend="sglang")
        async with running_router(config) as router:
            p.script(
                "/v1/chat/completions", after(lambda: d.wait_for("/v1/chat/completions"), json_reply(completion_body(chat=True)))
            )
            resp = await router.post("/v1/chat/completions", {**CHAT, "stream": True})
            assert resp.status == 200
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
            (p_rec,), (d_rec,) = p.requests(), d.requests()
            for rec in (p_rec, d_rec):
                assert rec.json["bootstrap_host"] == "127.0.0.1"
                assert rec.json["bootstrap_port"] == 8998
            room = d_rec.json["bootstrap_room"]
            assert p_rec.json["bootstrap_room"] == room and 0 <= room < 2**63
            assert d_rec.json["stream"] is True and d_rec.json["max_tokens"] == 7
            assert loads_are_zero(router)


async def test_sglang_batch_gets_arrays_of_rooms() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="sglang")
        async with running_router(config) as router:
            resp = await router.post("/v1/completions", {**COMPLETION, "prompt": ["a", "b", "c"]})
            assert resp.status == 200
            (p_rec,), (d_rec,) = p.requests(), d.requests()
            rooms = d_rec.json["bootstrap_room"]
            assert isinstance(rooms, list) and len(set(rooms)) == 3
            assert p_rec.json["bootstrap_room"] == rooms
            assert d_rec.json["bootstrap_host"] == ["127.0.0.1"] * 3
            assert d_rec.json["bootstrap_port"] == [None] * 3


async def test_sglang_prefill_error_fails_request_and_cancels_decode() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="sglang")
        config.retry.enabled = False
        async with running_router(config) as router:
            d.script("/v1/completions", hang())
            p.script("/v1/completions", after(lambda: d.wait_for("/v1/completions"), text_reply("boom", 503)))
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 503  # never a 200 with decode's answer
            assert (await resp.json())["error"]["message"]
            (d_rec,) = d.requests()
            await asyncio.wait_for(d_rec.done.wait(), 10)
            assert d_rec.cancelled
            assert loads_are_zero(router)


async def test_sglang_merges_prefill_input_logprobs_when_asked() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="sglang")
        async with running_router(config) as router:
            p.script("/v1/completions", json_reply({"meta_info": {"input_token_logprobs": [[-1.0, 5], [-2.0, 6]]}}))
            d.script(
                "/v1/completions",
                json_reply({"text": "x", "meta_info": {"input_token_logprobs": [], "output_token_logprobs": [[-0.5, 9]]}}),
            )
            resp = await router.post("/v1/completions", {**COMPLETION, "return_logprob": True})
            body = await resp.json()
            assert body["meta_info"]["input_token_logprobs"] == [[-1.0, 5], [-2.0, 6]]
            assert body["meta_info"]["output_token_logprobs"] == [[-0.5, 9]]


def test_merge_input_logprobs_leaves_answers_without_meta_alone() -> None:
    assert merge_input_logprobs({}, {"choices": []}) == {"choices": []}


# -- ATOM -------------------------------------------------------------------------------

ATOM_INFO = {"tp_size": 2, "dp_size": 4, "kv_role": "kv_producer", "handshake_port": 6301}
ATOM_PARAMS = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": [3, 4, 5],
    "remote_engine_id": "atom-p-0",
    "remote_host": "10.0.0.2",
    "remote_port": 7000,
    "remote_handshake_port": 6301,
    "tp_size": 2,
    "dp_rank": 3,
    "transfer_id": "t-1",
    "first_token_id": 42,
}


async def test_atom_reads_transfer_info_at_registration_and_enriches_params() -> None:
    async with upstreams("p", "d") as (p, d):
        p.set_default("/kv_transfer_info", json_reply(ATOM_INFO))
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="atom")
        async with running_router(config) as router:
            assert len(p.requests("/kv_transfer_info")) == 1  # before any inference request
            assert d.requests("/kv_transfer_info") == []  # only prefill workers are asked
            p.script("/v1/completions", json_reply(completion_body(chat=False, kv_transfer_params=ATOM_PARAMS)))
            resp = await router.post("/v1/completions", {**COMPLETION, "stream": True})
            assert resp.status == 200
            await resp.read()
            (p_rec,), (d_rec,) = p.requests("/v1/completions"), d.requests()
            assert p_rec.json["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False}
            assert p_rec.json["max_tokens"] == 1 and p_rec.json["stream"] is False
            expected = {**ATOM_PARAMS, "remote_dp_size": 4, "remote_tp_size": 2, "remote_dp_rank": 3}
            assert d_rec.json == {**COMPLETION, "stream": True, "kv_transfer_params": expected}
            assert len(p.requests("/kv_transfer_info")) == 1


async def test_atom_prefill_without_transfer_info_fails_registration() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="atom")
        async with running_router(config, wait_ready=False) as router:
            for _ in range(200):
                prefill = next(w for w in router.workers if w.role.value == "prefill")
                if prefill.state.value == "failed":
                    break
                await asyncio.sleep(0.02)
            assert prefill.state.value == "failed"
            assert "kv_transfer_info" in prefill.last_error
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "no_healthy_prefill"
