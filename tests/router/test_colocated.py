"""Co-located (openai backend) request path through a real in-process router."""

from __future__ import annotations

import asyncio

import orjson

from tests.support.inprocess_router import loads_are_zero, make_config, regular, running_router
from tests.support.recording_upstream import sse_reply, stream_events, upstreams


async def test_non_stream_forwards_raw_bytes_and_names_worker() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        raw = b'{"model": "tiny",   "prompt": "hi", "max_tokens": 3, "engine_field": {"x": 1}}'
        resp = await router.http.post(
            router.url + "/v1/completions", data=raw, headers={"content-type": "application/json", "x-request-id": "rid-1"}
        )
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["text"] == "hello"
        assert resp.headers["x-atom-worker"] == w1.url
        assert resp.headers["x-request-id"] == "rid-1"
        (rec,) = w1.requests()
        assert rec.body == raw  # unchanged bytes, engine-specific field included
        assert rec.headers["x-request-id"] == "rid-1"
        assert loads_are_zero(router)


async def test_stream_is_relayed_chunk_by_chunk() -> None:
    gate = asyncio.Event()
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script("/v1/chat/completions", sse_reply(stream_events(["a", "b", "c"]), gate=gate))
        resp = await router.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        # The first event arrives while the upstream still holds the rest back: no buffering.
        first = await resp.content.readuntil(b"\n\n")
        assert orjson.loads(first[len(b"data: ") :])["choices"][0]["delta"]["content"] == "a"
        gate.set()
        rest = await resp.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert rest.count(b"data: ") == 3
        # The load is released just after the last byte went out: wait for it, bounded.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while not loads_are_zero(router):
            assert loop.time() < deadline, "load counters never returned to zero"
            await asyncio.sleep(0.01)
