"""P/D over gRPC with real vLLM CPU engines, and `kv_aware` chats over gRPC.

One pair of gRPC engines for the module, started at once: both run AtomKVConnector as
`kv_both` over Mooncake TCP on loopback and publish KV events, so the same two engines are
a P/D pair (A prefills, B decodes), a co-located reference (a `Single` plan on A: a
request without `kv_transfer_params` never touches the connector) and a KV-aware fleet.
Every P/D case uses a prompt no engine has seen, so B holds none of its KV locally: the
`cached_tokens` B reports for the prompt are tokens its connector received from A.
Run under the heavy lock:
`flock /tmp/atom-heavy.lock timeout 1200 pytest tests/grpc/test_engine_grpc_pd.py`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config import DisaggConfig, RouterConfig
from router.tokenizer import load_tokenizer
from router.transports.grpc_worker import GrpcWorkerProbe
from testbed.processes import ManagedProcess
from testbed.vllm_grpc_engine import start_vllm_grpc_pd_fleet
from tests.support.inprocess_router import RunningRouter, make_config, pd_workers, regular, running_router
from tests.support.polling import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]

MAX_TOKENS = 16
BLOCK = 128  # vLLM's CPU block size


@pytest.fixture(scope="module")
def engines(tiny_llama: Path) -> Iterator[list[ManagedProcess]]:
    procs = start_vllm_grpc_pd_fleet(tiny_llama, 2)
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _url(proc: ManagedProcess) -> str:
    return f"grpc://127.0.0.1:{proc.port}"


def _colocated(engine: ManagedProcess, model: Path, **overrides: Any) -> RouterConfig:
    return make_config(workers=regular(_url(engine)), tokenizer_path=str(model), **overrides)


def _pd(prefill: ManagedProcess, decode: ManagedProcess, model: Path) -> RouterConfig:
    return make_config(
        workers=pd_workers([(_url(prefill), None)], [_url(decode)]),
        backend="vllm",
        tokenizer_path=str(model),
        disagg=DisaggConfig(always_pair=True),
    )


def _case(route: str, seed: int, model: Path) -> dict[str, Any]:
    """A greedy request whose prompt (about 300 tokens: two full KV blocks and a partial
    one) no other case shares."""
    rng = random.Random(seed)
    body: dict[str, Any] = {
        "model": str(model),
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    if route == "chat":
        words = " ".join(rng.choice(("prefill", "decode", "cache", "router", "block", "engine")) for _ in range(250))
        body["messages"] = [{"role": "user", "content": f"case {seed}: {words}"}]
    else:
        body["prompt"] = [rng.randrange(3, 600) for _ in range(300)]
        body["logprobs"] = 1
    return body


ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


async def _answer(router: RunningRouter, route: str, body: dict[str, Any]) -> tuple[dict[str, str], list[int], dict[str, Any]]:
    """Headers, output token ids and usage of one answer, streamed or not."""
    async with await router.post(ROUTES[route], body) as resp:
        assert resp.status == 200, await resp.text()
        headers = dict(resp.headers)
        raw = await resp.read()
    if not body.get("stream"):
        answer = orjson.loads(raw)
        return headers, answer["choices"][0]["token_ids"], answer["usage"]
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    ids = [t for c in chunks for choice in c["choices"] for t in choice.get("token_ids") or ()]
    return headers, ids, chunks[-1]["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("route", ["chat", "completion"])
async def test_pd_answer_equals_the_colocated_engine_and_decode_received_the_kv(
    route: str, stream: bool, engines: list[ManagedProcess], tiny_llama: Path
) -> None:
    prefill, decode = engines
    body = _case(route, seed=100 + 2 * list(ROUTES).index(route) + stream, model=tiny_llama)
    async with running_router(_colocated(prefill, tiny_llama)) as router:
        _, ref_ids, ref_usage = await _answer(router, route, body)
    assert len(ref_ids) == MAX_TOKENS
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with running_router(_pd(prefill, decode, tiny_llama)) as router:
        headers, ids, usage = await _answer(router, route, body)
    assert headers["x-atom-prefill-worker"] == _url(prefill) and headers["x-atom-decode-worker"] == _url(decode)
    assert ids == ref_ids
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (ref_usage["prompt_tokens"], MAX_TOKENS)
    # Neither engine had seen this prompt (A's co-located run cached nothing), so the
    # prompt tokens decode did not compute came from A's KV through the connector (vLLM
    # counts them in whole blocks).
    assert ref_usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert ref_usage["prompt_tokens"] > 2 * BLOCK
    assert usage["prompt_tokens_details"]["cached_tokens"] >= ref_usage["prompt_tokens"] // BLOCK * BLOCK, usage


async def _running(probe: GrpcWorkerProbe, worker: Any) -> int:
    return (await probe.load(worker, 5, time.monotonic())).running


async def test_client_hang_up_during_a_pd_stream_leaves_both_engines_idle(
    engines: list[ManagedProcess], tiny_llama: Path
) -> None:
    prefill, decode = engines
    # 300 prompt tokens + 700 fit the engines' 1024: decode runs for seconds unless aborted
    body = {**_case("completion", seed=200, model=tiny_llama), "max_tokens": 700, "stream": True}
    async with running_router(_pd(prefill, decode, tiny_llama)) as router:
        probe = router.service.manager.grpc_probe
        assert probe is not None
        workers = {w.url: w for w in router.workers}
        resp = await router.post(ROUTES["completion"], body)
        assert resp.status == 200
        request_id = resp.headers["x-request-id"]
        await resp.content.readuntil(b"\n\n")  # decode is generating now

        async def decoding() -> bool:
            return await _running(probe, workers[_url(decode)]) == 1

        assert await wait_for(decoding, 20), "GetLoads never showed the decode engine running the request"
        resp.close()  # the client hangs up mid-stream

        async def idle() -> bool:
            return all([await _running(probe, w) == 0 for w in workers.values()])

        assert await wait_for(idle, 30), "an engine kept the request running"
        assert await wait_for(lambda: _no_load(router), 10)
    # The router's Abort reached the decode engine (its servicer logs each one).
    assert f"Abort requests: ['{request_id}']" in decode.log_text()


async def _no_load(router: RunningRouter) -> bool:
    return all(w.in_flight_requests == 0 for w in router.workers)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def _metrics(router: RunningRouter) -> str:
    async with router.http.get(router.url + "/metrics") as resp:
        return await resp.text()


async def test_kv_aware_chats_sharing_a_long_system_prompt_go_to_the_worker_holding_it(
    engines: list[ManagedProcess], tiny_llama: Path
) -> None:
    model = str(tiny_llama)
    rng = random.Random(11)
    words = " ".join(rng.choice(("prefill", "decode", "cache", "router", "block", "engine")) for _ in range(400))
    system = f"You are the gRPC fleet's assistant. {words}"
    tokenizer = load_tokenizer(model)
    assert tokenizer is not None
    rendered = tokenizer.render_chat({"messages": [{"role": "system", "content": system}]}) or ""
    assert len(tokenizer.encode(rendered)) > 2 * BLOCK, "the system prompt must span two KV blocks"

    def chat(question: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0}

    config = make_config(
        workers=regular(*(_url(e) for e in engines)), policy="kv_aware", tokenizer_path=model
    )
    async with running_router(config) as router:
        feed = router.service.kv_events
        assert feed is not None
        ids = {w.url: w.worker_id for w in router.workers}

        async def subscribed() -> bool:
            return all(wid in feed.subscriptions for wid in ids.values())

        assert await wait_for(subscribed, 10), "the router never subscribed to both engines' KV events"
        before = {url: _metric(await _metrics(router), "atom_mesh_kv_indexed_blocks", worker_id=wid) for url, wid in ids.items()}
        async with await router.post(ROUTES["chat"], chat("What runs first?")) as resp:
            assert resp.status == 200, await resp.text()
            holder = resp.headers["x-atom-worker"]

        async def indexed() -> bool:
            blocks = _metric(await _metrics(router), "atom_mesh_kv_indexed_blocks", worker_id=ids[holder])
            return blocks >= before[holder] + 2

        assert await wait_for(indexed, 30), "the holder's blocks of the chat never reached the router's index"
        hits_before = _metric(await _metrics(router), "atom_mesh_placements_total", policy="kv_aware", reason="kv_hit")
        for question in ("And then?", "Which worker decodes?", "How long does the cache live?", "Why two hops?"):
            async with await router.post(ROUTES["chat"], chat(question)) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["x-atom-worker"] == holder
        hits = _metric(await _metrics(router), "atom_mesh_placements_total", policy="kv_aware", reason="kv_hit")
        assert hits == hits_before + 4
