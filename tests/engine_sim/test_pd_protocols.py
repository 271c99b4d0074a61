"""The three P/D protocols as a router would drive them, over real HTTP between legs."""

from __future__ import annotations

import asyncio
import uuid

from engine_sim.config import EngineConfig, WorkerSpec
from tests.engine_sim.conftest import running_fleet

PROMPT = " ".join(f"tok{i}" for i in range(50))


async def post(http, url, body):
    async with http.post(url, json=body) as r:
        return r.status, await r.json()


async def regular_answer(http, fleet, body):
    status, out = await post(http, f"{fleet.by_role('regular')[0].url}/v1/completions", body)
    assert status == 200
    return out["choices"][0]["text"]


async def test_vllm_serial_decode_equals_regular(http):
    specs = (WorkerSpec(), WorkerSpec(role="prefill"), WorkerSpec(role="decode"))
    async with running_fleet(*specs) as fleet:
        p, d = fleet.by_role("prefill")[0], fleet.by_role("decode")[0]
        body = {"prompt": PROMPT, "max_tokens": 8}
        status, pre = await post(
            http,
            f"{p.url}/v1/completions",
            {**body, "max_tokens": 1, "stream": False, "kv_transfer_params": {"do_remote_decode": True}},
        )
        assert status == 200
        params = pre["kv_transfer_params"]
        assert params["do_remote_prefill"] is True and params["remote_engine_id"] == p.engine_id
        assert len(params["remote_block_ids"]) == 4  # 50 tokens in blocks of 16
        status, dec = await post(http, f"{d.url}/v1/completions", {**body, "kv_transfer_params": params})
        assert status == 200
        assert dec["choices"][0]["text"] == await regular_answer(http, fleet, body)
        assert dec["usage"]["completion_tokens"] == 8
        assert p.snapshot()["prefill_legs"] == 1 and d.snapshot()["decode_legs"] == 1
        assert d.snapshot()["remote_prefill_tokens"] == 50 and d.snapshot()["prompt_tokens"] == 0

        # A prefill leg sent to the decode worker, and decode with KV of another prompt, are refused loudly.
        status, err = await post(http, f"{d.url}/v1/completions", {**body, "kv_transfer_params": {"do_remote_decode": True}})
        assert status == 400 and "prefill worker" in err["error"]["message"]
        status, pre = await post(
            http,
            f"{p.url}/v1/completions",
            {"prompt": "another prompt", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}},
        )
        status, err = await post(http, f"{d.url}/v1/completions", {**body, "kv_transfer_params": pre["kv_transfer_params"]})
        assert status == 500 and "another prompt" in err["error"]["message"]
        assert d.snapshot()["kv_failures"] == 1


async def test_vllm_decode_worker_prefills_a_plain_request_itself(http):
    """The decode-only route: like vLLM's kv_consumer, a request without kv_transfer_params is
    prefilled on the decode worker, on its own prefix cache, which also holds the KV that
    earlier pairs transferred to it (a multi-turn session's history)."""
    for protocol in ("vllm", "vllm-mooncake"):
        specs = (WorkerSpec(), WorkerSpec(role="decode", protocol=protocol))
        async with running_fleet(*specs) as fleet:
            d = fleet.by_role("decode")[0]
            body = {"prompt": PROMPT, "max_tokens": 8}
            status, out = await post(http, f"{d.url}/v1/completions", body)
            assert status == 200, out
            assert out["choices"][0]["text"] == await regular_answer(http, fleet, body)
            assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            stats = d.snapshot()
            assert stats["decode_only"] == 1 and stats["decode_legs"] == 0
            assert stats["prompt_tokens"] == 50 and stats["remote_prefill_tokens"] == 0
            # A follow-up turn finds the first turn's prompt and answer in the decode worker's cache.
            follow_up = {"prompt": f"{PROMPT} {out['choices'][0]['text']} next question", "max_tokens": 4}
            status, out = await post(http, f"{d.url}/v1/completions", follow_up)
            assert status == 200 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 48  # 3 full blocks of 16
            assert d.snapshot()["decode_only"] == 2


async def test_a_pair_leaves_its_prompt_cached_for_decode_only_follow_ups(http):
    specs = (WorkerSpec(role="prefill"), WorkerSpec(role="decode"))
    async with running_fleet(*specs) as fleet:
        p, d = fleet.by_role("prefill")[0], fleet.by_role("decode")[0]
        body = {"prompt": PROMPT, "max_tokens": 8}
        _, pre = await post(
            http, f"{p.url}/v1/completions", {**body, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}}
        )
        status, dec = await post(http, f"{d.url}/v1/completions", {**body, "kv_transfer_params": pre["kv_transfer_params"]})
        assert status == 200 and d.snapshot()["remote_prefill_tokens"] == 50
        follow_up = {"prompt": f"{PROMPT} {dec['choices'][0]['text']} and then", "max_tokens": 4}
        status, out = await post(http, f"{d.url}/v1/completions", follow_up)
        assert status == 200 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 48
        assert d.snapshot()["decode_only"] == 1 and d.snapshot()["cached_tokens"] == 48


async def test_vllm_mooncake_concurrent_legs(http):
    specs = (
        WorkerSpec(),
        WorkerSpec(role="prefill", protocol="vllm-mooncake"),
        WorkerSpec(role="decode", protocol="vllm-mooncake"),
    )
    async with running_fleet(*specs) as fleet:
        p, d = fleet.by_role("prefill")[0], fleet.by_role("decode")[0]
        bootstrap = f"http://127.0.0.1:{p.bootstrap_port}"
        async with http.get(f"{bootstrap}/query") as r:
            ranks = await r.json()
        engine_id = ranks["0"]["engine_id"]
        assert engine_id == p.engine_id
        body = {"prompt": PROMPT, "max_tokens": 8}
        tid = str(uuid.uuid4())
        d_body = {
            **body,
            "kv_transfer_params": {
                "do_remote_prefill": True,
                "transfer_id": tid,
                "remote_engine_id": engine_id,
                "remote_bootstrap_addr": bootstrap,
            },
        }
        p_body = {**body, "max_tokens": 1, "stream": False, "kv_transfer_params": {"do_remote_decode": True, "transfer_id": tid}}
        # Decode first: it must wait for the prefill leg, then answer like a regular worker.
        d_task = asyncio.create_task(post(http, f"{d.url}/v1/completions", d_body))
        await asyncio.sleep(0.05)
        (p_status, p_out), (d_status, d_out) = await asyncio.gather(post(http, f"{p.url}/v1/completions", p_body), d_task)
        assert p_status == 200 and p_out["kv_transfer_params"] is None
        assert d_status == 200 and d_out["choices"][0]["text"] == await regular_answer(http, fleet, body)

        wrong = {**d_body, "kv_transfer_params": {**d_body["kv_transfer_params"], "remote_bootstrap_addr": "http://127.0.0.1:1"}}
        status, err = await post(http, f"{d.url}/v1/completions", wrong)
        assert status == 400 and "remote_bootstrap_addr" in err["error"]["message"]
        status, err = await post(http, f"{p.url}/v1/completions", {**p_body, "kv_transfer_params": {"do_remote_decode": True}})
        assert status == 400 and "transfer_id" in err["error"]["message"]


async def test_decode_fails_when_the_prefill_leg_never_comes(http):
    cfg = EngineConfig(time_scale=0.1, kv_wait_timeout_s=0.2)
    specs = (WorkerSpec(role="prefill", protocol="vllm-mooncake"), WorkerSpec(role="decode", protocol="vllm-mooncake"))
    async with running_fleet(*specs, cfg=cfg) as fleet:
        p, d = fleet.workers
        params = {
            "do_remote_prefill": True,
            "transfer_id": "never",
            "remote_engine_id": p.engine_id,
            "remote_bootstrap_addr": f"http://127.0.0.1:{p.bootstrap_port}",
        }
        status, err = await post(http, f"{d.url}/v1/completions", {"prompt": PROMPT, "kv_transfer_params": params})
        assert status == 500 and "never" in err["error"]["message"]
        assert d.snapshot()["kv_failures"] == 1 and d.snapshot()["waiting"] == 0


async def test_sglang_bootstrap_room(http):
    specs = (WorkerSpec(), WorkerSpec(role="prefill", protocol="sglang"), WorkerSpec(role="decode", protocol="sglang"))
    async with running_fleet(*specs) as fleet:
        p, d = fleet.by_role("prefill")[0], fleet.by_role("decode")[0]
        async with http.get(f"http://127.0.0.1:{p.bootstrap_port}/route") as r:
            assert r.status == 200 and (await r.json())["page_size"] == 16
        async with http.get(f"http://127.0.0.1:{p.bootstrap_port}/health") as r:
            assert r.status == 200
        body = {"prompt": PROMPT, "max_tokens": 8}
        for worker in (p, d):  # a P/D server refuses requests without a room
            status, err = await post(http, f"{worker.url}/v1/completions", body)
            assert status == 400 and err["error"]["param"] == "bootstrap_room"
        room = 2**62 + 12345
        both = {**body, "bootstrap_host": "127.0.0.1", "bootstrap_port": p.bootstrap_port, "bootstrap_room": room}
        (p_status, p_out), (d_status, d_out) = await asyncio.gather(
            post(http, f"{p.url}/v1/completions", {**both, "bootstrap_port": None}),  # P fills in its own port
            post(http, f"{d.url}/v1/completions", both),
        )
        assert p_status == 200 and p_out["usage"]["completion_tokens"] == 1
        assert d_status == 200 and d_out["choices"][0]["text"] == await regular_answer(http, fleet, body)
        # A fake transfer (warm-up) needs no prefill leg at all.
        fake = {**body, "bootstrap_host": "2.2.2.2", "bootstrap_port": p.bootstrap_port, "bootstrap_room": 1}
        status, _ = await post(http, f"{d.url}/v1/completions", fake)
        assert status == 200
