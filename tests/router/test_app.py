"""The HTTP surface: errors, models, readiness, metrics, multi-model placement, auth."""

from __future__ import annotations

import asyncio

import orjson

from tests.support.inprocess_router import make_config, metrics_with, regular, running_router
from tests.support.recording_upstream import RecordingUpstream, json_reply, sse_reply, stream_events, upstreams

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


async def test_bad_input_gets_4xx_in_openai_shape_never_500() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url), max_payload_size=2048)) as router:
        cases = [
            (b"{oops", 400),
            (orjson.dumps({"model": "tiny"}), 400),
            (orjson.dumps({**CHAT, "max_tokens": -5}), 400),
            (orjson.dumps({**CHAT, "n": 0}), 400),
            (orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}), 413),
        ]
        for raw, status in cases:
            resp = await router.http.post(
                router.url + "/v1/chat/completions", data=raw, headers={"content-type": "application/json"}
            )
            assert resp.status == status, raw[:40]
            body = await resp.json()
            assert set(body["error"]) == {"message", "type", "param", "code"}
        assert (await router.http.get(router.url + "/v1/chat/completions")).status == 405
        assert w1.requests() == []  # nothing invalid reached the worker


async def test_models_is_union_of_live_workers() -> None:
    a = RecordingUpstream("a", models=["model-a"])
    b = RecordingUpstream("b", models=["model-b", "model-a"])
    c = RecordingUpstream("c", models=["model-c"])
    for s in (a, b, c):
        await s.start()
    try:
        async with running_router(make_config(workers=regular(a.url, b.url, c.url))) as router:
            await c.stop()  # one worker dies: the listing still answers
            resp = await router.http.get(router.url + "/v1/models")
            assert resp.status == 200
            body = await resp.json()
            assert body["object"] == "list"
            assert sorted(m["id"] for m in body["data"]) == ["model-a", "model-b"]
    finally:
        for s in (a, b):
            await s.stop()


async def test_requests_go_only_to_workers_serving_the_model() -> None:
    a = await RecordingUpstream("a", models=["model-a"]).start()
    b = await RecordingUpstream("b", models=["model-b"]).start()
    try:
        async with running_router(make_config(workers=regular(a.url, b.url))) as router:
            for _ in range(3):
                resp = await router.post("/v1/chat/completions", {**CHAT, "model": "model-b"})
                assert resp.headers["x-atom-worker"] == b.url
            assert a.requests() == [] and len(b.requests()) == 3
            resp = await router.post("/v1/chat/completions", {**CHAT, "model": "nope"})
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"
    finally:
        await a.stop()
        await b.stop()


async def test_readiness_waits_for_a_usable_worker() -> None:
    async with upstreams("w1") as (w1,):
        w1.set_default("/health", json_reply({}, 503))
        async with running_router(make_config(workers=regular(w1.url)), wait_ready=False) as router:
            assert (await router.http.get(router.url + "/health")).status == 200
            resp = await router.http.get(router.url + "/readiness")
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "not_ready"
            w1.set_default("/health", json_reply({}))
            for _ in range(500):
                if (await router.http.get(router.url + "/readiness")).status == 200:
                    break
                await asyncio.sleep(0.02)
            assert (await router.http.get(router.url + "/readiness")).status == 200


async def test_metrics_count_requests_placements_and_latency() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        await router.post("/v1/chat/completions", CHAT)
        await (await router.post("/v1/chat/completions", {**CHAT, "stream": True})).read()
        await router.post("/v1/chat/completions", {"messages": []})
        text = await metrics_with(router, 'status="400"} 1.0')
        assert 'atom_mesh_requests_total{model="tiny",route="/v1/chat/completions",status="200"} 2.0' in text
        assert 'atom_mesh_requests_total{model="unknown",route="/v1/chat/completions",status="400"} 1.0' in text
        assert 'atom_mesh_placements_total{policy="round_robin",reason="round_robin",role="regular"} 2.0' in text
        assert 'atom_mesh_time_to_first_token_seconds_count{route="/v1/chat/completions"} 1.0' in text
        assert 'atom_mesh_request_duration_seconds_count{route="/v1/chat/completions"} 3.0' in text
        assert "atom_mesh_worker_in_flight_requests" in text


async def test_stream_metrics_count_output_events_not_chunks() -> None:
    """One token plus a usage-only chunk plus [DONE] is one output event: no inter-event
    gap to observe. Three tokens (whatever the chunking) give one observation."""
    usage_only = {"id": "cmpl-test", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script(
            "/v1/chat/completions",
            sse_reply([*stream_events(["a"]), usage_only]),
            sse_reply([*stream_events(["a", "b", "c"]), usage_only]),
        )
        for _ in range(2):
            resp = await router.post("/v1/chat/completions", {**CHAT, "stream": True})
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        counted = 'atom_mesh_requests_total{model="tiny",route="/v1/chat/completions",status="200"} 2.0'
        text = await metrics_with(router, counted)
        assert 'atom_mesh_time_to_first_token_seconds_count{route="/v1/chat/completions"} 2.0' in text
        assert 'atom_mesh_inter_event_latency_seconds_count{route="/v1/chat/completions"} 1.0' in text
        assert "time_per_output_token" not in text


async def test_api_key_guards_inference_but_not_health() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url), api_key="sekret")) as router:
        resp = await router.post("/v1/chat/completions", CHAT)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
        ok = await router.post("/v1/chat/completions", CHAT, headers={"authorization": "Bearer sekret"})
        assert ok.status == 200
        assert (await router.http.get(router.url + "/health")).status == 200
        assert (await router.http.get(router.url + "/workers")).status == 401
        listing = await router.http.get(router.url + "/workers", headers={"authorization": "Bearer sekret"})
        assert listing.status == 200
        assert len((await listing.json())["workers"]) == 1


async def test_upstream_is_not_asked_for_compressed_bodies() -> None:
    # The router relays upstream bytes without their content-encoding header, so it must
    # never invite an engine to compress them.
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        resp = await router.post("/v1/chat/completions", CHAT)
        assert resp.status == 200
        (recorded,) = [r for r in w1.requests() if r.path == "/v1/chat/completions"]
        assert "gzip" not in recorded.headers.get("accept-encoding", "")
