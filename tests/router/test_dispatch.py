"""Retries, circuit breakers, timeouts, cancellation and load accounting, end to end."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from router.config import CircuitBreakerConfig, DisaggConfig
from tests.support.inprocess_router import loads_are_zero, make_config, metrics_with, pd_workers, regular, running_router
from tests.support.recording_upstream import (
    hang,
    json_reply,
    sse_reply,
    stream_events,
    text_reply,
    upstreams,
)

COMPLETION = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


async def _settled(router) -> bool:
    """True once every load counter is back to zero (cancellation runs asynchronously);
    False if they are not within 10 seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while not loads_are_zero(router):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _hang_up_watch() -> asyncio.Task:
    """The router's watcher for the one request in flight: it finishes when the router
    has seen the client hang up (router.inference.HangUpWatch names it)."""
    (watch,) = [t for t in asyncio.all_tasks() if t.get_name() == "client-hang-up-watch"]
    return watch


async def test_retry_on_retryable_status_picks_another_worker() -> None:
    async with upstreams("w1", "w2") as (w1, w2), running_router(make_config(workers=regular(w1.url, w2.url))) as router:
        for w in (w1, w2):
            w.script("/v1/completions", text_reply("overloaded", 503))
        # Each worker fails once: the retry must go to the other one (not the one that just
        # failed), and the third attempt, with both excluded, falls back to a tried one.
        resp = await router.post("/v1/completions", COMPLETION)
        assert resp.status == 200
        assert len(w1.requests()) + len(w2.requests()) == 3
        assert len(w1.requests()) >= 1 and len(w2.requests()) >= 1, "the retry went to the same worker"
        metrics = await (await router.http.get(router.url + "/metrics")).text()
        assert 'atom_mesh_retries_total{cause="503",route="/v1/completions"} 2.0' in metrics
        assert loads_are_zero(router)


async def test_connection_refused_is_retried_on_another_worker() -> None:
    async with upstreams("w1", "w2") as (w1, w2), running_router(make_config(workers=regular(w1.url, w2.url))) as router:
        await w1.stop()  # registered and ready, now gone: connection refused
        for _ in range(4):
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 200
            assert resp.headers["x-atom-worker"] == w2.url
        assert loads_are_zero(router)


async def test_pd_retry_uses_another_pair_after_prefill_failure() -> None:
    async with upstreams("p1", "p2", "d") as (p1, p2, d):
        config = make_config(
            workers=pd_workers([(p1.url, None), (p2.url, None)], [d.url]), backend="vllm", disagg=DisaggConfig(always_pair=True)
        )
        async with running_router(config) as router:
            for p in (p1, p2):
                p.script("/v1/completions", text_reply("prefill died", 500))
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 200
            # first prefill fails, the retry takes the other prefill (fails too), the third
            # attempt falls back to a tried one, which now works
            assert len(p1.requests()) + len(p2.requests()) == 3
            assert len(p1.requests()) >= 1 and len(p2.requests()) >= 1
            assert len(d.requests()) == 1  # decode only after a prefill succeeded
            assert loads_are_zero(router)


async def test_retries_exhausted_returns_last_upstream_error_in_openai_shape() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.set_default("/v1/completions", text_reply("still overloaded", 503))
        resp = await router.post("/v1/completions", COMPLETION)
        assert resp.status == 503
        err = (await resp.json())["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert "still overloaded" in err["message"]
        assert len(w1.requests()) == 4  # 1 + max_retries(3), all on the only worker
        assert loads_are_zero(router)


async def test_client_errors_pass_through_without_retry() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script("/v1/completions", json_reply({"object": "error", "message": "bad logit_bias"}, 400))
        resp = await router.post("/v1/completions", COMPLETION)
        assert resp.status == 400
        assert "bad logit_bias" in (await resp.json())["error"]["message"]
        assert len(w1.requests()) == 1
        assert router.workers[0].breaker.consecutive_failures == 0


async def test_breaker_opens_after_failures_and_stops_traffic() -> None:
    config = make_config(workers=[], circuit_breaker=CircuitBreakerConfig(failure_threshold=2, timeout_duration_secs=3600))
    config.retry.enabled = False
    async with upstreams("w1") as (w1,):
        config.workers = regular(w1.url)
        async with running_router(config) as router:
            w1.set_default("/v1/completions", text_reply("broken", 500))
            for _ in range(2):
                assert (await router.post("/v1/completions", COMPLETION)).status == 500
            assert router.workers[0].breaker.state.value == "open"
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 503
            body = await resp.json()
            assert body["error"]["code"] == "no_available_workers"
            assert "retry-after" in resp.headers
            assert len(w1.requests()) == 2  # the open breaker kept the third request away
            assert (await router.http.get(router.url + "/readiness")).status == 503


async def test_request_timeout_cancels_hung_worker() -> None:
    async with upstreams("w1") as (w1,):
        config = make_config(workers=regular(w1.url), request_timeout_secs=0.5)
        async with running_router(config) as router:
            w1.script("/v1/completions", hang())
            resp = await router.post("/v1/completions", COMPLETION)
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "timeout"
            (rec,) = w1.requests()
            await asyncio.wait_for(rec.done.wait(), 10)
            assert rec.cancelled
            assert await _settled(router)


async def test_worker_dying_mid_stream_gives_error_event_then_done() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script("/v1/chat/completions", sse_reply(stream_events(["a", "b", "c"]), die_after=2))
        resp = await router.post(
            "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        )
        assert resp.status == 200
        events = [e for e in (await resp.read()).split(b"\n\n") if e]
        assert [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:2]] == ["a", "b"]
        error = orjson.loads(events[2][6:])["error"]
        assert error["code"] == "upstream_stream_broken" and w1.url in error["message"]
        assert events[3] == b"data: [DONE]"
        assert len(events) == 4
        assert loads_are_zero(router)
        assert router.workers[0].breaker.consecutive_failures == 1


async def test_client_disconnect_cancels_non_stream_upstream() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script("/v1/completions", hang())
        task = asyncio.create_task(router.post("/v1/completions", COMPLETION))
        (rec,) = await w1.wait_for("/v1/completions")
        task.cancel()  # the client gives up: its connection closes
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.wait_for(rec.done.wait(), 10)
        assert rec.cancelled
        assert await _settled(router)
        assert 'status="499"' in await metrics_with(router, 'status="499"')


async def test_client_disconnect_mid_stream_cancels_upstream() -> None:
    gate = asyncio.Event()
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script("/v1/completions", sse_reply(stream_events(["a", "b"], chat=False), gate=gate))
        async with aiohttp.ClientSession() as client:
            resp = await client.post(router.url + "/v1/completions", json={**COMPLETION, "stream": True})
            await resp.content.readuntil(b"\n\n")
            resp.close()  # drop the connection mid-stream
        (rec,) = w1.requests()
        await asyncio.wait_for(rec.done.wait(), 10)
        assert rec.cancelled
        assert await _settled(router)


async def test_client_leaving_after_done_is_a_complete_answer_not_a_disconnect() -> None:
    """The OpenAI SDK hangs up as soon as it reads `[DONE]`; the engine may close its
    stream a moment later. That request succeeded: counted 200, never 499."""
    end = asyncio.Event()
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        w1.script("/v1/completions", sse_reply(stream_events(["a", "b"], chat=False), end_gate=end))
        async with aiohttp.ClientSession() as client:
            resp = await client.post(router.url + "/v1/completions", json={**COMPLETION, "stream": True})
            body = b""
            while not body.endswith(b"data: [DONE]\n\n"):
                body += await resp.content.readuntil(b"\n\n")
            watch = _hang_up_watch()
            resp.close()  # hang up right after [DONE], while the upstream is still open
        await asyncio.wait({watch}, timeout=10)
        assert watch.done() and not watch.cancelled(), "the router never saw the hang-up"
        (rec,) = w1.requests()
        assert not rec.finished  # the hang-up came first; now the upstream ends
        end.set()
        metrics = await metrics_with(router, 'route="/v1/completions",status="200"')
        assert 'route="/v1/completions",status="200"} 1.0' in metrics
        assert 'status="499"' not in metrics
        assert await _settled(router)


async def test_pd_client_disconnect_cancels_both_legs() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="sglang")
        async with running_router(config) as router:
            p.script("/v1/completions", hang())
            d.script("/v1/completions", hang())
            task = asyncio.create_task(router.post("/v1/completions", COMPLETION))
            (p_rec,) = await p.wait_for("/v1/completions")
            (d_rec,) = await d.wait_for("/v1/completions")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for rec in (p_rec, d_rec):
                await asyncio.wait_for(rec.done.wait(), 10)
                assert rec.cancelled
            assert await _settled(router)


async def test_loads_return_to_zero_after_mixed_endings() -> None:
    async with upstreams("w1", "w2") as (w1, w2), running_router(make_config(workers=regular(w1.url, w2.url))) as router:
        for w in (w1, w2):
            w.script("/v1/completions", text_reply("x", 500), json_reply({"error": {"message": "bad"}}, 422))
        results = await asyncio.gather(*(router.post("/v1/completions", {**COMPLETION, "stream": i % 2 == 0}) for i in range(8)))
        for r in results:
            await r.read()
        assert {r.status for r in results} <= {200, 422}
        assert await _settled(router)
        assert all(w.in_flight_requests == 0 for w in router.workers)


async def test_upstream_gets_request_id_and_generated_when_absent() -> None:
    async with upstreams("w1") as (w1,), running_router(make_config(workers=regular(w1.url))) as router:
        resp = await router.post("/v1/completions", COMPLETION)
        rid = resp.headers["x-request-id"]
        assert rid.startswith("atom-")
        assert w1.requests()[0].headers["x-request-id"] == rid




def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    from router.config import RetryConfig
    from router.dispatch import Dispatcher
    from router.metrics import RouterMetrics

    config = make_config(
        workers=[], retry=RetryConfig(initial_backoff_ms=100, backoff_multiplier=2.0, max_backoff_ms=500, jitter_factor=0.2)
    )
    dispatcher = Dispatcher(None, None, config, RouterMetrics())  # type: ignore[arg-type]
    for retry, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        for _ in range(20):
            assert base * 0.8 <= dispatcher.backoff_secs(retry) <= base * 1.2
