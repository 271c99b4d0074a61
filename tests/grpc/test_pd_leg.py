"""P/D over gRPC without an engine: the leg rules (pure), and the router's dispatch of a
prefill/decode pair against scripted `VllmEngine` gRPC servers (tests.support.grpc_engine_double):
what each leg carries, which worker a failure blames, what the client gets, and that a
client hang-up aborts the leg that was running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from router.adapters.base import LegFailure
from router.adapters.vllm_grpc import PREFILL_KV_PARAMS, decode_request, prefill_params, prefill_request
from router.config import DisaggConfig, RouterConfig, WorkerSpec
from router.dispatch import plan_transport
from router.errors import ApiError
from router.generation.types import GenerationChunk, GenerationRequest, SamplingParams
from router.placement.types import Pair, Single
from router.transports import Transport
from router.workers.worker import Role, Worker
from tests.support.grpc_engine_double import MODEL, engine_doubles, kv_params, output_ids
from tests.support.inprocess_router import RunningRouter, make_config, running_router

PROMPT = [5, 17, 42, 99]


def _decode_leg(**sampling: Any) -> GenerationRequest:
    s = SamplingParams(temperature=0.0, max_tokens=20, min_tokens=3, logprobs=2, **sampling)
    return GenerationRequest(request_id="r1", input_ids=(1, 2, 3), sampling=s, stream=True, text="abc")


def test_prefill_leg_is_one_token_not_streamed_and_asks_to_keep_the_kv() -> None:
    decode = _decode_leg(stop=("x",))
    prefill = prefill_request(decode)
    assert prefill.kv_transfer_params == {"do_remote_decode": True}
    assert not prefill.stream
    assert (prefill.sampling.max_tokens, prefill.sampling.min_tokens, prefill.sampling.logprobs) == (1, None, None)
    assert (prefill.input_ids, prefill.request_id, prefill.text) == (decode.input_ids, decode.request_id, decode.text)
    assert prefill.sampling.temperature == 0.0 and prefill.sampling.stop == ("x",)
    prefill.kv_transfer_params["x"] = 1  # each leg has its own dict
    assert PREFILL_KV_PARAMS == {"do_remote_decode": True}


def test_decode_leg_is_the_clients_request_with_exactly_the_prefills_params() -> None:
    decode = _decode_leg()
    params = {"do_remote_prefill": True, "transfer_id": "e/r1", "remote_block_ids": [3, 4]}
    leg = decode_request(decode, params)
    assert leg.kv_transfer_params == params
    assert leg.sampling == decode.sampling and leg.stream  # max_tokens never lowered
    assert decode_request(decode, None) == decode


def _worker(url: str, role: Role = Role.PREFILL) -> Worker:
    return Worker(worker_id=url, url=url, role=role)


def test_a_prefill_that_ended_without_its_kv_is_the_prefill_workers_failure() -> None:
    worker = _worker("grpc://p:1")
    for reason in ("abort", "error"):
        with pytest.raises(LegFailure) as info:
            prefill_params(worker, GenerationChunk((), 4, 0, finish_reason=reason))
        assert info.value.worker is worker and info.value.status is None and reason in info.value.message
    params = {"do_remote_prefill": True}
    assert prefill_params(worker, GenerationChunk((7,), 4, 1, finish_reason="length", kv_transfer_params=params)) == params
    assert prefill_params(worker, GenerationChunk((7,), 4, 1, finish_reason="length")) is None


def test_a_pair_across_transports_is_refused_with_what_to_do() -> None:
    grpc_p, http_d = _worker("grpc://p:1"), _worker("http://d:2", Role.DECODE)
    with pytest.raises(ApiError) as info:
        plan_transport(Pair(grpc_p, http_d))
    assert info.value.status == 501 and "both http:// or both grpc://" in info.value.message
    assert plan_transport(Pair(grpc_p, _worker("grpc://d:2", Role.DECODE))) is Transport.GRPC
    assert plan_transport(Single(http_d)) is Transport.HTTP


# -- dispatch against gRPC engine doubles ---------------------------------------------------


def _pd_config(prefill: list[str], decode: list[str], **overrides: Any) -> RouterConfig:
    workers = [WorkerSpec(url=u, role="prefill") for u in prefill] + [WorkerSpec(url=u, role="decode") for u in decode]
    overrides.setdefault("backend", "vllm")
    return make_config(workers=workers, pd=True, disagg=DisaggConfig(always_pair=True), **overrides)


async def _complete(router: RunningRouter, **extra: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, **extra}
    async with await router.post("/v1/completions", body) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


def _by_role(router: RunningRouter, role: Role) -> list[Worker]:
    return [w for w in router.workers if w.role is role]


async def test_pair_runs_prefill_then_decode_with_its_params_and_the_client_gets_decodes_answer() -> None:
    async with engine_doubles("p", "d") as ((p_url, p), (d_url, d)):
        async with running_router(_pd_config([p_url], [d_url])) as router:
            status, headers, body = await _complete(router, temperature=0, min_tokens=2)
    assert status == 200, body
    (p_req,) = p.requests
    (d_req,) = d.requests
    assert kv_params(p_req) == {"do_remote_decode": True}
    assert (p_req.stream, p_req.sampling_params.max_tokens, p_req.sampling_params.min_tokens) == (False, 1, 0)
    assert kv_params(d_req) == p.prefill_answer(p_req)  # exactly what prefill returned
    assert (d_req.sampling_params.max_tokens, d_req.sampling_params.min_tokens) == (6, 2)
    assert list(p_req.tokenized.input_ids) == list(d_req.tokenized.input_ids) == PROMPT
    assert body["choices"][0]["token_ids"] == output_ids(d_req)
    assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] == len(PROMPT)
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == len(PROMPT)  # decode's count
    assert (headers["x-atom-prefill-worker"], headers["x-atom-decode-worker"]) == (p_url, d_url)


async def test_streamed_pair_streams_decodes_tokens() -> None:
    async with engine_doubles("p", "d") as ((p_url, p), (d_url, d)):
        async with running_router(_pd_config([p_url], [d_url])) as router:
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
            async with await router.post("/v1/completions", body) as resp:
                assert resp.status == 200 and resp.headers["x-atom-decode-worker"] == d_url
                raw = (await resp.read()).decode()
    events = [orjson.loads(e.removeprefix("data: ")) for e in raw.split("\n\n") if e and e != "data: [DONE]"]
    ids = [t for e in events for c in e["choices"] for t in c["token_ids"]]
    assert ids == output_ids(d.requests[0]) and events[-1]["usage"]["completion_tokens"] == 5
    assert not p.requests[0].stream and d.requests[0].stream


async def test_a_prefill_worker_that_is_down_is_retried_on_another_pair_and_its_breaker_counts_it() -> None:
    async with engine_doubles("p-down", "p-up", "d") as ((down_url, down), (up_url, up), (d_url, d)):
        down.mode = "unavailable"
        config = _pd_config([down_url, up_url], [d_url], prefill_policy="round_robin")
        async with running_router(config) as router:
            statuses = [(await _complete(router))[0] for _ in range(2)]
            failed = next(w for w in _by_role(router, Role.PREFILL) if w.url == down_url)
            assert failed.breaker.consecutive_failures >= 1
    assert statuses == [200, 200]
    assert len(down.requests) >= 1 and len(d.requests) == 2  # decode ran once per request, after a good prefill
    assert all(kv_params(r) and kv_params(r)["transfer_id"].startswith("p-up/") for r in d.requests)  # type: ignore[index]


async def test_a_prefill_the_engine_refuses_is_the_clients_400_and_decode_never_runs() -> None:
    async with engine_doubles("p", "d") as ((p_url, p), (d_url, d)):
        p.mode = "invalid"
        async with running_router(_pd_config([p_url], [d_url])) as router:
            status, _, body = await _complete(router)
            (prefill,) = _by_role(router, Role.PREFILL)
            assert prefill.breaker.consecutive_failures == 0  # the request's fault, not the worker's
    assert status == 400 and "prompt too long" in body["error"]["message"] and p_url in body["error"]["message"]
    assert len(p.requests) == 1 and d.requests == []


async def test_a_decode_the_engine_refuses_is_relayed_as_a_single_engines_refusal() -> None:
    async with engine_doubles("p", "d") as ((p_url, _p), (d_url, d)):
        d.mode = "invalid"
        async with running_router(_pd_config([p_url], [d_url])) as router:
            status, _, body = await _complete(router)
    assert status == 400 and body["error"]["message"] == "d: prompt too long for this model"


async def _wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 10)


async def _eventually(predicate: Callable[[], Awaitable[bool]]) -> bool:
    for _ in range(500):  # bounded: 10 s
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_client_hang_up_during_the_prefill_leg_aborts_it_and_never_starts_decode() -> None:
    async with engine_doubles("p", "d") as ((p_url, p), (d_url, d)):
        p.mode = "hang"
        async with running_router(_pd_config([p_url], [d_url])) as router:
            pending = asyncio.ensure_future(router.post("/v1/completions", {"model": MODEL, "prompt": PROMPT}))
            await _wait(p.started)
            pending.cancel()  # the client hangs up while prefill runs
            await _wait(p.aborted)

            async def idle() -> bool:
                return all(w.in_flight_requests == 0 for w in router.workers)

            assert await _eventually(idle)
    assert p.aborts == [p.requests[0].request_id] and d.requests == []


async def test_client_hang_up_during_the_decode_stream_aborts_decode() -> None:
    async with engine_doubles("p", "d") as ((p_url, p), (d_url, d)):
        d.mode = "first_chunk_then_hang"
        async with running_router(_pd_config([p_url], [d_url])) as router:
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 50, "stream": True}
            resp = await router.post("/v1/completions", body)
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            resp.close()
            await _wait(d.aborted)
    assert d.aborts == [d.requests[0].request_id] and p.aborts == []  # prefill had finished


async def test_pairs_need_the_vllm_backend() -> None:
    async with engine_doubles("p", "d") as ((p_url, _p), (d_url, d)):
        async with running_router(_pd_config([p_url], [d_url], backend="sglang")) as router:
            status, _, body = await _complete(router)
    assert status == 501 and "--backend vllm" in body["error"]["message"] and d.requests == []
