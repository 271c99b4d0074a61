"""A real vLLM CPU engine serving `VllmEngine` over gRPC behind the router.

One gRPC engine for the whole module (with KV events on, relayed over gRPC). Reference
answers come from the shared vLLM HTTP engine (`vllm_colocated`), computed first and
that engine released before the gRPC one starts, so only one engine runs at a time.
Run under the heavy lock: `flock /tmp/atom-heavy.lock timeout 900 pytest tests/grpc -m engine`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from router.config import WorkerSpec
from router.errors import ApiError
from router.transports.grpc_worker import GrpcWorkerProbe
from router.workers.worker import WorkerState
from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.vllm_grpc_engine import start_vllm_grpc
from tests.support.inprocess_router import RunningRouter, make_config, regular, running_router
from tests.support.shared_engine import SharedEngine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPTS = {
    "short": list(range(5, 40)),
    "other": [7, 300, 12, 99, 450, 3, 8, 200, 17],
}
MAX_TOKENS = 12
TOO_LONG = [5] * 1100  # the engines run with --max-model-len 1024
CHAT = {"messages": [{"role": "user", "content": "Tell me about the weather"}], "max_tokens": MAX_TOKENS, "temperature": 0}
TEXT = {"prompt": "The quick brown fox", "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 1}


def _greedy(prompt: list[int], **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 2, "ignore_eos": True, **extra}


@pytest.fixture(scope="module")
def references(vllm_colocated: SharedEngine, tiny_llama: Path) -> Iterator[dict[str, Any]]:
    """vLLM HTTP's answers to the cases (token ids, logprobs, error bodies), then released."""
    model = str(tiny_llama)
    out: dict[str, Any] = {}
    with httpx.Client(base_url=vllm_colocated.url, timeout=120) as http:
        for name, prompt in PROMPTS.items():
            resp = http.post("/v1/completions", json={"model": model, "return_token_ids": True, **_greedy(prompt)})
            assert resp.status_code == 200, resp.text
            out[name] = resp.json()["choices"][0]
        for name, route, body in (("chat", "/v1/chat/completions", CHAT), ("text", "/v1/completions", TEXT)):
            resp = http.post(route, json={"model": model, "return_token_ids": True, **body})
            assert resp.status_code == 200, resp.text
            out[name] = resp.json()["choices"][0]
        too_long = http.post("/v1/completions", json={"model": model, "prompt": TOO_LONG, "max_tokens": 4})
        out["too_long"] = (too_long.status_code, too_long.json())
    vllm_colocated.release()
    yield out


@pytest.fixture(scope="module")
def grpc_engine(references: dict[str, Any], tiny_llama: Path) -> Iterator[ManagedProcess]:
    # A wildcard host makes vLLM bind its publisher (a plain host makes it connect); the
    # servicer's relay subscribes on loopback.
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{free_port()}"}
    proc = start_vllm_grpc(tiny_llama, extra_args=["--kv-events-config", json.dumps(events)])
    try:
        yield proc
    finally:
        proc.stop()


def _grpc_url(proc: ManagedProcess) -> str:
    return f"grpc://127.0.0.1:{proc.port}"


async def _json(router: RunningRouter, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with await router.post("/v1/completions", body) as resp:
        return resp.status, await resp.json(content_type=None)


def _assert_same_tokens(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    assert ours["token_ids"] == ref["token_ids"]
    assert ours["logprobs"]["token_logprobs"] == pytest.approx(ref["logprobs"]["token_logprobs"], abs=1e-4)
    assert ours["finish_reason"] == ref["finish_reason"] == "length"


async def test_grpc_worker_registers_with_its_served_model(grpc_engine: ManagedProcess, tiny_llama: Path) -> None:
    async with running_router(make_config(workers=regular(_grpc_url(grpc_engine)))) as router:
        (worker,) = router.workers
        assert worker.state is WorkerState.READY and worker.models == {str(tiny_llama)}
        async with router.http.get(router.url + "/v1/models") as resp:
            listed = [m["id"] for m in (await resp.json())["data"]]
        assert listed == [str(tiny_llama)]


@pytest.mark.parametrize("name", PROMPTS)
async def test_completion_by_token_ids_equals_vllm_http(
    name: str, grpc_engine: ManagedProcess, references: dict[str, Any], tiny_llama: Path
) -> None:
    async with running_router(make_config(workers=regular(_grpc_url(grpc_engine)))) as router:
        status, body = await _json(router, {"model": str(tiny_llama), **_greedy(PROMPTS[name])})
    assert status == 200, body
    _assert_same_tokens(body["choices"][0], references[name])
    assert body["usage"]["prompt_tokens"] == len(PROMPTS[name])
    assert body["usage"]["completion_tokens"] == MAX_TOKENS


async def test_streamed_completion_equals_vllm_http(
    grpc_engine: ManagedProcess, references: dict[str, Any], tiny_llama: Path
) -> None:
    body = {"model": str(tiny_llama), "stream": True, "stream_options": {"include_usage": True}, **_greedy(PROMPTS["short"])}
    async with running_router(make_config(workers=regular(_grpc_url(grpc_engine)))) as router:
        async with await router.post("/v1/completions", body) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    ids = [t for c in choices for t in c["token_ids"]]
    logprobs = [lp for c in choices if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]]
    ref = references["short"]
    assert ids == ref["token_ids"]
    assert logprobs == pytest.approx(ref["logprobs"]["token_logprobs"], abs=1e-4)
    assert choices[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


async def _running_on_engine(probe: GrpcWorkerProbe, worker: Any) -> int:
    return (await probe.load(worker, 5, time.monotonic())).running


async def _wait_for(predicate: Any, deadline_secs: float) -> bool:
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_client_hang_up_aborts_the_engines_request(grpc_engine: ManagedProcess, tiny_llama: Path) -> None:
    body = {"model": str(tiny_llama), "stream": True, **_greedy(PROMPTS["short"], max_tokens=1000, logprobs=None)}
    async with running_router(make_config(workers=regular(_grpc_url(grpc_engine)))) as router:
        (worker,) = router.workers
        probe = router.service.manager.grpc_probe
        assert probe is not None
        resp = await router.post("/v1/completions", body)
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")  # generating now
        assert await _running_on_engine(probe, worker) == 1
        resp.close()  # the client hangs up mid-stream
        assert await _wait_for(lambda: _zero_running(probe, worker), 30), "the engine kept generating"
        assert await _wait_for(lambda: _no_load(router), 10)


async def _zero_running(probe: GrpcWorkerProbe, worker: Any) -> bool:
    return await _running_on_engine(probe, worker) == 0


async def _no_load(router: RunningRouter) -> bool:
    return all(w.in_flight_requests == 0 for w in router.workers)


async def test_prompt_too_long_is_the_same_400_as_http(
    grpc_engine: ManagedProcess, references: dict[str, Any], tiny_llama: Path
) -> None:
    async with running_router(make_config(workers=regular(_grpc_url(grpc_engine)))) as router:
        status, body = await _json(router, {"model": str(tiny_llama), "prompt": TOO_LONG, "max_tokens": 4})
        ref_status, ref_body = references["too_long"]
        assert status == ref_status == 400
        # vLLM's HTTP body, as the router relays it for an HTTP worker (message aside: the
        # two servers word the same check differently; both name the lengths)
        ours, ref = body["error"], ApiError.from_upstream(ref_status, orjson.dumps(ref_body), "ref").payload()["error"]
        assert (ours["type"], ours["code"]) == (ref["type"], ref["code"]) == ("BadRequestError", "400")
        for message in (ours["message"], ref["message"]):
            assert "1024" in message and "1100" in message
        # the worker is not blamed for the request's fault
        status, _ = await _json(router, {"model": str(tiny_llama), **_greedy(PROMPTS["other"])})
        assert status == 200


async def test_unknown_model_and_down_worker_get_the_http_error_bodies(grpc_engine: ManagedProcess, tiny_llama: Path) -> None:
    async with running_router(make_config(workers=regular(_grpc_url(grpc_engine)))) as router:
        status, body = await _json(router, {"model": "no-such-model", **_greedy(PROMPTS["other"])})
        assert status == 404 and body["error"]["code"] == "model_not_found"
    dead = free_port()
    bodies = {}
    for scheme in ("grpc", "http"):
        config = make_config(workers=[WorkerSpec(url=f"{scheme}://127.0.0.1:{dead}")], worker_startup_timeout_secs=0.5)
        async with running_router(config, wait_ready=False) as router:
            assert await _wait_for(lambda r=router: _failed(r), 10)
            bodies[scheme] = await _json(router, {"prompt": PROMPTS["other"], "max_tokens": 2})
    assert bodies["grpc"] == bodies["http"]
    assert bodies["grpc"][0] == 503


async def _failed(router: RunningRouter) -> bool:
    return all(w.state is WorkerState.FAILED for w in router.workers)


async def test_kv_events_over_grpc_reach_the_index(grpc_engine: ManagedProcess, tiny_llama: Path) -> None:
    config = make_config(workers=regular(_grpc_url(grpc_engine)), policy="kv_aware")
    prompt = [(i * 7) % 600 + 3 for i in range(300)]  # two full 128-token blocks
    async with running_router(config) as router:
        feed = router.service.kv_events
        assert feed is not None
        (worker,) = router.workers
        assert await _wait_for(lambda: _subscribed(feed, worker), 10)
        status, _ = await _json(router, {"model": str(tiny_llama), "prompt": prompt, "max_tokens": 2, "temperature": 0})
        assert status == 200
        assert await _wait_for(lambda: _indexed(feed, worker, prompt), 30), "no KV event reached the index"


async def _subscribed(feed: Any, worker: Any) -> bool:
    return worker.worker_id in feed.subscriptions


async def _indexed(feed: Any, worker: Any, prompt: list[int]) -> bool:
    matched, _ = feed.index.matched_blocks(prompt, [worker.worker_id])
    return matched.get(worker.worker_id, 0) >= 2


@pytest.mark.parametrize(("name", "route", "body"), [("chat", "/v1/chat/completions", CHAT), ("text", "/v1/completions", TEXT)])
async def test_with_the_routers_tokenizer_chats_and_text_equal_vllm_http(
    name: str, route: str, body: dict[str, Any], grpc_engine: ManagedProcess, references: dict[str, Any], tiny_llama: Path
) -> None:
    """router.generation renders the chat and detokenizes: same ids and text as vLLM."""
    config = make_config(workers=regular(_grpc_url(grpc_engine)), tokenizer_path=str(tiny_llama))
    async with running_router(config) as router:
        async with await router.post(route, {"model": str(tiny_llama), "return_token_ids": True, **body}) as resp:
            assert resp.status == 200, await resp.text()
            ours = (await resp.json())["choices"][0]
    ref = references[name]
    assert ours["token_ids"] == ref["token_ids"]
    if name == "chat":
        assert ours["message"]["content"] == ref["message"]["content"]
    else:
        assert ours["text"] == ref["text"]
        assert ours["logprobs"]["token_logprobs"] == pytest.approx(ref["logprobs"]["token_logprobs"], abs=1e-4)
