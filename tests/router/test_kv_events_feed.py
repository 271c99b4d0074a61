"""The router's KV event feed over real ZMQ sockets, against a publisher that speaks
vLLM's wire format (the simulator's): events reach the index, a sequence gap clears the
worker's entries, malformed batches are dropped, removal forgets the worker; publisher
discovery through `GET /kv_event_sources`; and a router process with `--policy kv_aware`
in front of a simulated fleet."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import aiohttp
import httpx
import msgspec

from benchmarks.workloads import random_text, vocabulary
from engine_sim.kv_cache import BlockRemoved, BlockStored
from engine_sim.kv_events import KVEventPublisher
from engine_sim.tokenizer import tokenizer_json
from router.kv_events import KVEventFeed, apply_batch
from router.policies.kv_block_index import KVBlockIndex
from router.workers.worker import Worker
from testbed.sim_fleet import start_fleet
from tests.support.fault_harness import MODEL, launch_router
from tests.support.recording_upstream import RecordingUpstream, after, json_reply

BS = 4
PROMPT = list(range(100, 112))  # 3 blocks


async def until(what: str, predicate: Callable[[], bool], publish: Callable[[], None] | None = None) -> None:
    """Bounded wait (a SUB socket joins a moment after connect: early messages are lost,
    so `publish` is repeated until the subscriber sees it)."""
    for _ in range(250):
        if publish is not None:
            publish()
        await asyncio.sleep(0.02)
        if predicate():
            return
    raise AssertionError(f"never happened: {what}")


async def test_feed_indexes_published_blocks_and_forgets_on_gap_and_removal() -> None:
    pub = KVEventPublisher("127.0.0.1", block_size=BS)
    index = KVBlockIndex()
    feed = KVEventFeed(index)
    worker = Worker("http://127.0.0.1:9", worker_id="w1", kv_events_endpoint=pub.endpoint)
    try:
        await feed.subscribe(worker)
        await feed.subscribe(worker)  # idempotent: one subscription per worker
        stored = BlockStored([11, 12, 13], None, PROMPT)
        await until("blocks indexed", lambda: index.block_count("w1") == 3, lambda: pub.publish([stored]))
        assert index.matched_blocks(PROMPT, ["w1"]) == ({"w1": 3}, 3)

        pub.publish([BlockRemoved([13])])
        await until("block removed", lambda: index.block_count("w1") == 2)

        # Lost events (seq jumps): the worker's blocks are forgotten, then rebuilt from what follows.
        pub._seq += 5
        pub.publish([BlockStored([21], None, [7, 7, 7, 7])])
        await until("gap cleared the worker", lambda: index.block_count("w1") == 1)
        assert index.matched_blocks(PROMPT, ["w1"])[0] == {"w1": 0}

        text = b"".join(m for metric in feed.collect() for m in [str(metric).encode()])
        assert b"atom_mesh_kv_indexed_blocks" in text and b"BlockStored" in text

        feed.unsubscribe(worker)
        assert index.block_count("w1") == 0
    finally:
        await feed.stop()
        await pub.close()


def test_apply_batch_reads_vllm_events_and_refuses_garbage() -> None:
    index = KVBlockIndex()
    batch = [
        1.0,
        [
            {
                "type": "BlockStored",
                "block_hashes": [b"\x01", b"\x02"],
                "parent_block_hash": None,
                "token_ids": PROMPT[:8],
                "block_size": BS,
                "lora_id": None,
                "medium": "GPU",
            },
            {"type": "BlockRemoved", "block_hashes": [b"\x02"], "medium": "GPU"},
            {"type": "SomethingNew"},
        ],
        0,
    ]
    seen = apply_batch(index, "w1", msgspec.msgpack.encode(batch))
    assert seen == {"BlockStored": 1, "BlockRemoved": 1, "unknown": 1}
    assert index.matched_blocks(PROMPT, ["w1"])[0] == {"w1": 1}
    apply_batch(index, "w1", msgspec.msgpack.encode([2.0, [{"type": "AllBlocksCleared"}]]))
    assert index.block_count("w1") == 0
    for garbage in (b"\xc1", msgspec.msgpack.encode({"not": "a batch"})):
        try:
            apply_batch(index, "w1", garbage)
        except ValueError:
            continue
        raise AssertionError(f"accepted {garbage!r}")


def test_kv_aware_router_over_a_simulated_fleet_routes_text_prompts_to_their_holder(tmp_path) -> None:
    """Router process + simulator process: the router finds each worker's publisher at
    `GET /kv_event_sources`, tokenizes text prompts with `--tokenizer-path` exactly as the
    simulator does, and sends a prompt whose prefix a worker cached to that worker."""
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps(tokenizer_json(vocabulary())))
    fleet = start_fleet(tmp_path, "--regular", "3", "--kv-events", "--block-size", "16")
    router = None
    try:
        router = launch_router(
            "--policy",
            "kv_aware",
            "--tokenizer-path",
            str(tokenizer),
            "--worker-urls",
            *fleet.urls(),
            "--worker-startup-check-interval",
            "0.2",
            request_timeout=30,
        )
        router.wait_all_ready()
        ids = {w["url"]: w["id"] for w in router.workers()}

        def blocks(worker_id: str) -> float:
            text = httpx.get(f"{router.url}/metrics", timeout=10).text
            line = next(
                (x for x in text.splitlines() if x.startswith(f'atom_mesh_kv_indexed_blocks{{worker_id="{worker_id}"}}')), None
            )
            return float(line.split()[-1]) if line else 0.0

        def complete(prompt: str) -> str:
            r = httpx.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2}, timeout=30)
            assert r.status_code == 200, r.text
            return r.headers["x-atom-worker"]

        rng = random.Random(3)
        for _ in range(3):  # three prefixes, each 4 blocks of 16 words
            prefix = random_text(rng, 64)
            before = {url: blocks(wid) for url, wid in ids.items()}
            holder = complete(prefix)
            for _ in range(200):  # bounded: until the holder's events reached the router
                if blocks(ids[holder]) >= before[holder] + 4:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"the router never indexed {holder}'s blocks")
            for _ in range(3):
                assert complete(f"{prefix} {random_text(rng, 5)}") == holder
    finally:
        if router is not None:
            router.stop()
        fleet.stop()


async def test_discovery_finds_vllms_publisher_and_a_worker_removed_meanwhile_gets_no_listener() -> None:
    sources = {"0": {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5557"}}
    released = asyncio.Event()
    feed = KVEventFeed(KVBlockIndex())
    async with RecordingUpstream("engine") as engine, aiohttp.ClientSession() as session:
        engine.script("/kv_event_sources", json_reply(sources), after(released, json_reply(sources)))
        worker = Worker(engine.url, worker_id="w1")
        # A wildcard bind means the engine's own host.
        assert await feed.endpoint_for(worker, session) == "tcp://127.0.0.1:5557"
        assert await feed.endpoint_for(Worker("http://127.0.0.1:9", worker_id="w9"), session) is None  # nothing there

        pending = asyncio.create_task(feed.subscribe(worker, session))
        await engine.wait_for("/kv_event_sources", count=2)
        feed.unsubscribe(worker)  # the worker leaves while its publisher is being looked up
        released.set()
        await pending
        assert feed.subscriptions == set()
    await feed.stop()
