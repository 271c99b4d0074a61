"""KV events over ZMQ: what the simulated cache stores and evicts, in vLLM's wire format."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

msgspec = pytest.importorskip("msgspec", reason="KV events need msgspec (the vllm extra)")
pytest.importorskip("zmq", reason="KV events need pyzmq (the vllm extra)")
import zmq.asyncio  # noqa: E402

from engine_sim.config import EngineConfig, WorkerSpec  # noqa: E402
from engine_sim.kv_cache import block_hashes  # noqa: E402
from engine_sim.tokenizer import tokenize  # noqa: E402
from router.kv_event_wire import END_SEQ  # noqa: E402
from tests.engine_sim.conftest import running_fleet  # noqa: E402

U64 = (1 << 64) - 1
CFG = EngineConfig(time_scale=0.1, num_blocks=8)  # 128 tokens: a few prompts evict


async def replay(endpoint: str, start: int = 0) -> list[tuple[int, list]]:
    """Every buffered batch from `start` on, via the replay socket: [(seq, decoded batch)]."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    try:
        await sock.send_multipart((b"", start.to_bytes(8, "big")))
        batches = []
        while True:
            _, _topic, seq, payload = await asyncio.wait_for(sock.recv_multipart(), 10)
            if seq == END_SEQ:
                return batches
            batches.append((int.from_bytes(seq, "big"), msgspec.msgpack.decode(payload)))
    finally:
        sock.close(linger=0)


async def complete(http: aiohttp.ClientSession, url: str, prompt: str) -> None:
    async with http.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 2}) as r:
        assert r.status == 200


async def test_stored_and_removed_blocks_are_published(http):
    async with running_fleet(WorkerSpec(), cfg=CFG, kv_events=True) as fleet:
        worker = fleet.workers[0]
        info = worker.info()
        first = " ".join(f"a{i}" for i in range(40))
        await complete(http, worker.url, first)
        batches = await replay(info["kv_events_replay_endpoint"])
        assert [seq for seq, _ in batches] == list(range(len(batches)))
        events = [e for _, (ts, evs) in batches for e in evs]
        stored = [e for e in events if e["type"] == "BlockStored"]
        ids = tokenize(first)
        expected = [h & U64 for h in block_hashes(ids, 16)]
        assert stored[0]["block_hashes"] == expected  # both full prompt blocks, in order
        assert stored[0]["parent_block_hash"] is None
        assert stored[0]["token_ids"] == ids[:32] and stored[0]["block_size"] == 16

        # Fill the 8-block cache with other prompts: the first prompt's blocks get evicted.
        for n in range(3):
            await complete(http, worker.url, " ".join(f"b{n}x{i}" for i in range(40)))
        events = [e for _, (ts, evs) in await replay(info["kv_events_replay_endpoint"]) for e in evs]
        removed = {h for e in events if e["type"] == "BlockRemoved" for h in e["block_hashes"]}
        assert set(expected) & removed
        assert worker.snapshot()["evicted_blocks"] == len(removed)


async def test_subscribers_get_the_same_batches_as_replay(http):
    async with running_fleet(WorkerSpec(), cfg=CFG, kv_events=True) as fleet:
        worker = fleet.workers[0]
        sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(worker.info()["kv_events_endpoint"])
        try:
            # PUB drops messages until the subscription is established: send until one arrives.
            for i in range(200):
                await complete(http, worker.url, " ".join(f"c{i}x{j}" for j in range(20)))
                if await sub.poll(50):
                    break
            topic, seq, payload = await sub.recv_multipart()
            replayed = dict(await replay(worker.info()["kv_events_replay_endpoint"]))
            assert msgspec.msgpack.decode(payload) == replayed[int.from_bytes(seq, "big")]
        finally:
            sub.close(linger=0)


@pytest.mark.slow  # importing vLLM's types pulls in torch
async def test_batches_decode_with_vllms_own_types(http):
    kv_events = pytest.importorskip("vllm.distributed.kv_events", reason="vLLM is not installed")
    async with running_fleet(WorkerSpec(), cfg=CFG, kv_events=True) as fleet:
        worker = fleet.workers[0]
        await complete(http, worker.url, " ".join(f"d{i}" for i in range(40)))
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.connect(worker.info()["kv_events_replay_endpoint"])
        try:
            await sock.send_multipart((b"", (0).to_bytes(8, "big")))
            _, _, _, payload = await asyncio.wait_for(sock.recv_multipart(), 10)
        finally:
            sock.close(linger=0)
        batch = msgspec.msgpack.Decoder(kv_events.KVEventBatch).decode(payload)
        assert isinstance(batch.events[0], kv_events.BlockStored)
        assert batch.events[0].block_size == 16 and len(batch.events[0].block_hashes) == 2
