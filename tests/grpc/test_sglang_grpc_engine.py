"""A real SGLang CPU server in gRPC mode (`SglangScheduler`) behind the router.

One gRPC engine for the whole module; nothing else runs beside it. The references are
SGLang's own HTTP answers for the same model, recorded once by
`record_sglang_references.py` into `data/sglang_references.json`.
Run under the heavy lock: `flock /tmp/atom-heavy.lock timeout 900 pytest tests/grpc/test_sglang_grpc_engine.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.transports.grpc_engines import ENGINE_INFO_KEY
from router.workers.worker import WorkerState
from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.sglang_grpc_engine import sglang_grpc_available, start_sglang_grpc
from tests.grpc.record_sglang_references import MODEL, OUT, PROMPTS
from tests.support.completions import RECORDED_LOGPROB_TOLERANCE
from tests.support.inprocess_router import RunningRouter, make_config, regular, running_router
from tests.support.polling import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture(scope="module")
def references(tiny_llama: Path) -> dict[str, Any]:
    """SGLang HTTP's recorded answers, with the model path put back in the bodies."""
    recorded = json.loads(OUT.read_text().replace(MODEL, str(tiny_llama)))
    if recorded["model_build"] != tiny_llama.name:
        pytest.fail(
            f"{OUT.name} was recorded for model build {recorded['model_build']}, this is {tiny_llama.name}: "
            "re-run python -m tests.grpc.record_sglang_references"
        )
    cases: dict[str, Any] = recorded["cases"]
    return cases


@pytest.fixture(scope="module")
def sglang_grpc(tiny_llama: Path) -> Iterator[ManagedProcess]:
    reason = sglang_grpc_available()
    if reason:
        pytest.skip(reason)
    # The servicer would turn SGLang's KV-event publisher on by itself, but 0.5.23's
    # ServerArgs refuse the change ("kv_events_config cannot be set on ServerArgs"): ask for
    # it. A wildcard host makes the publisher bind; the servicer subscribes on loopback.
    events = {"publisher": "zmq", "endpoint": f"tcp://*:{free_port()}"}
    proc = start_sglang_grpc(tiny_llama, extra_args=["--kv-events-config", json.dumps(events)])
    try:
        yield proc
    finally:
        proc.stop()


def _url(proc: ManagedProcess) -> str:
    return f"grpc://127.0.0.1:{proc.port}"


async def _post(router: RunningRouter, route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with await router.post(route, body) as resp:
        return resp.status, await resp.json(content_type=None)


def _case(references: dict[str, Any], name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    case = references[name]
    assert case["status"] == 200, case["answer"]
    return case["route"], case["body"], case["answer"]["choices"][0]


async def test_the_worker_registers_as_sglang_with_its_model(sglang_grpc: ManagedProcess, tiny_llama: Path) -> None:
    async with running_router(make_config(workers=regular(_url(sglang_grpc)))) as router:
        (worker,) = router.workers
        assert worker.state is WorkerState.READY and worker.models == {str(tiny_llama)}
        assert worker.engine_info[ENGINE_INFO_KEY] == "sglang"
        async with router.http.get(router.url + "/v1/models") as resp:
            (listed,) = (await resp.json())["data"]
        assert listed["id"] == str(tiny_llama) and listed["owned_by"] == "sglang"


@pytest.mark.parametrize("name", PROMPTS)
async def test_completion_by_token_ids_equals_sglang_http(
    name: str, sglang_grpc: ManagedProcess, references: dict[str, Any]
) -> None:
    route, body, ref = _case(references, name)
    async with running_router(make_config(workers=regular(_url(sglang_grpc)))) as router:
        status, answer = await _post(router, route, body)
    assert status == 200, answer
    ours = answer["choices"][0]
    assert ours["token_ids"] == ref["token_ids"] and len(ours["token_ids"]) == body["max_tokens"]
    assert ours["logprobs"]["token_logprobs"] == pytest.approx(ref["logprobs"]["token_logprobs"], abs=RECORDED_LOGPROB_TOLERANCE)
    assert ours["finish_reason"] == ref["finish_reason"] == "length"
    assert answer["usage"]["prompt_tokens"] == len(PROMPTS[name])
    assert answer["usage"]["completion_tokens"] == body["max_tokens"]


async def test_streamed_completion_equals_sglang_http(sglang_grpc: ManagedProcess, references: dict[str, Any]) -> None:
    route, body, ref = _case(references, "short")
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with running_router(make_config(workers=regular(_url(sglang_grpc)))) as router:
        async with await router.post(route, stream) as resp:
            assert resp.status == 200
            raw = (await resp.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert [t for c in choices for t in c["token_ids"]] == ref["token_ids"]
    logprobs = [lp for c in choices if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]]
    assert logprobs == pytest.approx(ref["logprobs"]["token_logprobs"], abs=RECORDED_LOGPROB_TOLERANCE)
    assert choices[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == body["max_tokens"]


@pytest.mark.parametrize("name", ["chat", "text"])
async def test_with_the_routers_tokenizer_chat_and_text_equal_sglang_http(
    name: str, sglang_grpc: ManagedProcess, references: dict[str, Any], tiny_llama: Path
) -> None:
    route, body, ref = _case(references, name)
    config = make_config(workers=regular(_url(sglang_grpc)), tokenizer_path=str(tiny_llama))
    async with running_router(config) as router:
        status, answer = await _post(router, route, {**body, "return_token_ids": True})
    assert status == 200, answer
    ours = answer["choices"][0]
    assert ours["finish_reason"] == ref["finish_reason"] == "length"
    if name == "chat":  # neither server puts token ids in a chat answer: text and logprobs say it
        assert ours["message"]["content"] == ref["message"]["content"]
        values = [e["logprob"] for e in ours["logprobs"]["content"]]
        assert values == pytest.approx([e["logprob"] for e in ref["logprobs"]["content"]], abs=RECORDED_LOGPROB_TOLERANCE)
        assert len(values) == body["max_tokens"]
    else:
        assert ours["token_ids"] == ref["token_ids"]
        assert ours["text"] == ref["text"]
        want = ref["logprobs"]["token_logprobs"]
        assert ours["logprobs"]["token_logprobs"] == pytest.approx(want, abs=RECORDED_LOGPROB_TOLERANCE)


async def test_client_hang_up_aborts_the_schedulers_request(sglang_grpc: ManagedProcess, tiny_llama: Path) -> None:
    body = {"model": str(tiny_llama), "prompt": PROMPTS["short"], "max_tokens": 1500, "temperature": 0, "ignore_eos": True}
    async with running_router(make_config(workers=regular(_url(sglang_grpc)))) as router:
        (worker,) = router.workers
        probe = router.service.manager.grpc_probe
        assert probe is not None

        async def running(expected: int) -> bool:
            return (await probe.load(worker, 5, time.monotonic())).running == expected

        resp = await router.post("/v1/completions", {**body, "stream": True})
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")  # generating now
        assert await wait_for(lambda: running(1), 10), "the scheduler never reported the request running"
        resp.close()  # the client hangs up mid-stream
        assert await wait_for(lambda: running(0), 30), "the scheduler kept generating"
        assert await wait_for(lambda: _no_load(router), 10)


async def _no_load(router: RunningRouter) -> bool:
    return all(w.in_flight_requests == 0 for w in router.workers)


async def test_refusals_are_400s_and_the_worker_stays_up(
    sglang_grpc: ManagedProcess, references: dict[str, Any], tiny_llama: Path
) -> None:
    ref = references["too_long"]
    async with running_router(make_config(workers=regular(_url(sglang_grpc)))) as router:
        status, answer = await _post(router, ref["route"], ref["body"])
        assert status == ref["status"] == 400, answer
        assert answer["error"]["type"] == ref["answer"]["type"] == "BadRequestError"
        # The scheduler words it differently from SGLang's HTTP front end ("exceeds the
        # maximum allowed length (2042 tokens)": the context less its reserved tokens).
        for message in (answer["error"]["message"], ref["answer"]["message"]):
            assert "2100 tokens" in message
        # An id past the embedding kills SGLang's scheduler if sent: the router refuses ids
        # past the vocabulary size GetModelInfo reports (0.5.23's servicer reports its
        # fallback 128256 here, not the model's 643: see docs/grpc.md).
        (worker,) = router.workers
        vocab = worker.engine_info["model"]["vocab_size"]
        status, answer = await _post(router, "/v1/completions", {"model": str(tiny_llama), "prompt": [5, vocab], "max_tokens": 2})
        assert status == 400 and f"[0, {vocab})" in answer["error"]["message"], (vocab, answer)
        status, answer = await _post(router, "/v1/completions", {"model": str(tiny_llama), "prompt": [5], "seed": 1})
        assert status == 400 and answer["error"]["param"] == "seed", answer
        status, answer = await _post(router, "/v1/completions", {"model": "no-such-model", "prompt": [5], "max_tokens": 2})
        assert status == 404 and answer["error"]["code"] == "model_not_found"
        # none of these is the worker's fault
        status, answer = await _post(router, "/v1/completions", {"model": str(tiny_llama), "prompt": [5, 6], "max_tokens": 2})
        assert status == 200, answer
        assert worker.state is WorkerState.READY
    assert sglang_grpc.poll() is None, sglang_grpc.log_tail()


async def test_kv_events_over_grpc_reach_the_index(sglang_grpc: ManagedProcess, tiny_llama: Path) -> None:
    """The servicer turns SGLang's ZMQ KV-event publisher on by itself and relays it as
    `SubscribeKvEvents`: the router's kv_aware index learns the prompt's blocks."""
    config = make_config(workers=regular(_url(sglang_grpc)), policy="kv_aware")
    prompt = [(i * 7) % 600 + 3 for i in range(300)]
    async with running_router(config) as router:
        feed = router.service.kv_events
        assert feed is not None
        (worker,) = router.workers

        async def subscribed() -> bool:
            return worker.worker_id in feed.subscriptions

        async def indexed() -> bool:
            matched, _ = feed.index.matched_blocks(prompt, [worker.worker_id])
            return matched.get(worker.worker_id, 0) > 0

        assert await wait_for(subscribed, 10)
        status, _ = await _post(router, "/v1/completions", {"model": str(tiny_llama), "prompt": prompt, "max_tokens": 2})
        assert status == 200
        assert await wait_for(indexed, 30), "no KV event reached the index"
