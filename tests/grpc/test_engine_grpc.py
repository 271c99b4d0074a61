"""A real vLLM CPU engine serving `VllmEngine` over gRPC behind the router.

One gRPC engine for the whole module (with KV events on, relayed over gRPC). The answers
it is compared with are vLLM's own HTTP server's on the same model, recorded once
(`tests/grpc/record_vllm_http.py`, `data/vllm_http_references.json`), so the module
starts no HTTP engine. The model is the tiny Llama with sampling defaults in its
generation_config.json and a chat template that refuses a chat starting with the
assistant (see the recorder). smg, the peer gateway, runs against the same engine once.
Run under the heavy lock: `flock /tmp/atom-heavy.lock timeout 1200 pytest tests/grpc -m engine`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from router.config import ProcessingConfig, RouterConfig, WorkerSpec
from router.errors import ApiError
from router.transports.grpc_worker import GrpcWorkerProbe
from router.workers.worker import WorkerState
from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.vllm_engine import vllm_version
from testbed.vllm_grpc_engine import start_vllm_grpc
from tests.grpc.record_vllm_http import (
    CHAT,
    GENERATION_DEFAULTS,
    MAX_TOKENS,
    OUT,
    PROMPTS,
    TEXT,
    TOO_LONG,
    greedy,
    reference_model,
)
from tests.support.inprocess_router import RunningRouter, make_config, regular, running_router
from tests.support.polling import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]

RERECORD = "re-record: flock /tmp/atom-heavy.lock timeout 900 python -m tests.grpc.record_vllm_http"


@pytest.fixture(scope="module")
def recorded(tiny_llama: Path) -> dict[str, Any]:
    """vLLM HTTP's recorded answers, for this model build and vLLM version only."""
    data = json.loads(OUT.read_text())
    if data["model"] != tiny_llama.name or data["vllm"] != vllm_version():
        pytest.fail(
            f"{OUT.name} was recorded with model {data['model']} and vLLM {data['vllm']}, "
            f"not {tiny_llama.name} and {vllm_version()}; {RERECORD}"
        )
    return dict(data["cases"])


@pytest.fixture(scope="module")
def model_dir(tiny_llama: Path) -> Path:
    return reference_model(tiny_llama)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> str:
    return str(model_dir)


def answer(recorded: dict[str, Any], name: str) -> Any:
    return recorded[name]["answer"]


def ref_choice(recorded: dict[str, Any], name: str) -> dict[str, Any]:
    assert recorded[name]["status"] == 200, recorded[name]
    return dict(answer(recorded, name)["choices"][0])


@pytest.fixture(scope="module")
def grpc_engine(recorded: dict[str, Any], model_dir: Path) -> Iterator[ManagedProcess]:
    # A wildcard host makes vLLM bind its publisher (a plain host makes it connect); the
    # servicer's relay subscribes on loopback.
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{free_port()}"}
    proc = start_vllm_grpc(model_dir, extra_args=["--kv-events-config", json.dumps(events)])
    try:
        yield proc
    finally:
        proc.stop()


def _grpc_url(proc: ManagedProcess) -> str:
    return f"grpc://127.0.0.1:{proc.port}"


def _token_ids_only(proc: ManagedProcess, **overrides: Any) -> RouterConfig:
    """A router without a tokenizer that does not fetch one: token-id completions only."""
    return make_config(
        workers=regular(_grpc_url(proc)), processing=ProcessingConfig(disable_tokenizer_autoload=True), **overrides
    )


def _fetching(proc: ManagedProcess, cache: Path, **processing: Any) -> RouterConfig:
    """A router started without --tokenizer-path: it fetches the engine's (GetTokenizer)."""
    return make_config(
        workers=regular(_grpc_url(proc)), processing=ProcessingConfig(tokenizer_cache_dir=str(cache), **processing)
    )


async def _json(router: RunningRouter, body: dict[str, Any], route: str = "/v1/completions") -> tuple[int, dict[str, Any]]:
    async with await router.post(route, body) as resp:
        return resp.status, await resp.json(content_type=None)


async def _events(router: RunningRouter, route: str, body: dict[str, Any]) -> list[Any]:
    async with await router.post(route, body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


def _assert_same_tokens(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    assert ours["token_ids"] == ref["token_ids"]
    assert ours["logprobs"]["token_logprobs"] == pytest.approx(ref["logprobs"]["token_logprobs"], abs=1e-4)
    assert ours["finish_reason"] == ref["finish_reason"] == "length"


async def test_grpc_worker_registers_with_its_served_model(grpc_engine: ManagedProcess, model: str) -> None:
    async with running_router(_token_ids_only(grpc_engine)) as router:
        (worker,) = router.workers
        assert worker.state is WorkerState.READY and worker.models == {model}
        async with router.http.get(router.url + "/v1/models") as resp:
            listed = [m["id"] for m in (await resp.json())["data"]]
        assert listed == [model]


@pytest.mark.parametrize("name", PROMPTS)
async def test_completion_by_token_ids_equals_vllm_http(
    name: str, grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str
) -> None:
    async with running_router(_token_ids_only(grpc_engine)) as router:
        status, body = await _json(router, {"model": model, **greedy(PROMPTS[name])})
    assert status == 200, body
    _assert_same_tokens(body["choices"][0], ref_choice(recorded, name))
    assert body["usage"]["prompt_tokens"] == len(PROMPTS[name])
    assert body["usage"]["completion_tokens"] == MAX_TOKENS


async def test_streamed_completion_equals_vllm_http(grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str) -> None:
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, **greedy(PROMPTS["short"])}
    async with running_router(_token_ids_only(grpc_engine)) as router:
        chunks = await _events(router, "/v1/completions", body)
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    ids = [t for c in choices for t in c["token_ids"]]
    logprobs = [lp for c in choices if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]]
    ref = ref_choice(recorded, "short")
    assert ids == ref["token_ids"]
    assert logprobs == pytest.approx(ref["logprobs"]["token_logprobs"], abs=1e-4)
    assert choices[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


async def _running_on_engine(probe: GrpcWorkerProbe, worker: Any) -> int:
    return (await probe.load(worker, 5, time.monotonic())).running


async def test_client_hang_up_aborts_the_engines_request(grpc_engine: ManagedProcess, model: str) -> None:
    body = {"model": model, "stream": True, **greedy(PROMPTS["short"], max_tokens=1000, logprobs=None)}
    async with running_router(_token_ids_only(grpc_engine)) as router:
        (worker,) = router.workers
        probe = router.service.manager.grpc_probe
        assert probe is not None
        resp = await router.post("/v1/completions", body)
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")  # generating now
        assert await _running_on_engine(probe, worker) == 1
        resp.close()  # the client hangs up mid-stream
        assert await wait_for(lambda: _zero_running(probe, worker), 30), "the engine kept generating"
        assert await wait_for(lambda: _no_load(router), 10)


async def _zero_running(probe: GrpcWorkerProbe, worker: Any) -> bool:
    return await _running_on_engine(probe, worker) == 0


async def _no_load(router: RunningRouter) -> bool:
    return all(w.in_flight_requests == 0 for w in router.workers)


async def test_prompt_too_long_is_the_same_400_as_http(grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str) -> None:
    async with running_router(_token_ids_only(grpc_engine)) as router:
        status, body = await _json(router, {"model": model, "prompt": TOO_LONG, "max_tokens": 4})
        ref_status, ref_body = recorded["too_long"]["status"], answer(recorded, "too_long")
        assert status == ref_status == 400
        # vLLM's HTTP body, as the router relays it for an HTTP worker (message aside: the
        # two servers word the same check differently; both name the lengths)
        ours, ref = body["error"], ApiError.from_upstream(ref_status, orjson.dumps(ref_body), "ref").payload()["error"]
        assert (ours["type"], ours["code"]) == (ref["type"], ref["code"]) == ("BadRequestError", "400")
        for message in (ours["message"], ref["message"]):
            assert "1024" in message and "1100" in message
        # the worker is not blamed for the request's fault
        status, _ = await _json(router, {"model": model, **greedy(PROMPTS["other"])})
        assert status == 200


async def test_unknown_model_and_down_worker_get_the_http_error_bodies(grpc_engine: ManagedProcess) -> None:
    async with running_router(_token_ids_only(grpc_engine)) as router:
        status, body = await _json(router, {"model": "no-such-model", **greedy(PROMPTS["other"])})
        assert status == 404 and body["error"]["code"] == "model_not_found"
    dead = free_port()
    bodies = {}
    for scheme in ("grpc", "http"):
        config = make_config(workers=[WorkerSpec(url=f"{scheme}://127.0.0.1:{dead}")], worker_startup_timeout_secs=0.5)
        async with running_router(config, wait_ready=False) as router:
            assert await wait_for(lambda r=router: _failed(r), 10)
            bodies[scheme] = await _json(router, {"prompt": PROMPTS["other"], "max_tokens": 2})
    assert bodies["grpc"] == bodies["http"]
    assert bodies["grpc"][0] == 503


async def _failed(router: RunningRouter) -> bool:
    return all(w.state is WorkerState.FAILED for w in router.workers)


async def test_kv_events_over_grpc_reach_the_index(grpc_engine: ManagedProcess, model: str) -> None:
    config = _token_ids_only(grpc_engine, policy="kv_aware")
    prompt = [(i * 7) % 600 + 3 for i in range(300)]  # two full 128-token blocks
    async with running_router(config) as router:
        feed = router.service.kv_events
        assert feed is not None
        (worker,) = router.workers
        assert await wait_for(lambda: _subscribed(feed, worker), 10)
        status, _ = await _json(router, {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0})
        assert status == 200
        assert await wait_for(lambda: _indexed(feed, worker, prompt), 30), "no KV event reached the index"


async def _subscribed(feed: Any, worker: Any) -> bool:
    return worker.worker_id in feed.subscriptions


async def _indexed(feed: Any, worker: Any, prompt: list[int]) -> bool:
    matched, _ = feed.index.matched_blocks(prompt, [worker.worker_id])
    return matched.get(worker.worker_id, 0) >= 2


def _assert_same_answer(name: str, ours: dict[str, Any], ref: dict[str, Any]) -> None:
    assert ours["token_ids"] == ref["token_ids"]
    if "message" in ref:
        assert ours["message"]["content"] == ref["message"]["content"]
    else:
        assert ours["text"] == ref["text"]
    if ref.get("logprobs"):
        assert ours["logprobs"]["token_logprobs"] == pytest.approx(ref["logprobs"]["token_logprobs"], abs=1e-4)
    assert ours["finish_reason"] == ref["finish_reason"], name


@pytest.mark.parametrize(("name", "route", "body"), [("chat", "/v1/chat/completions", CHAT), ("text", "/v1/completions", TEXT)])
async def test_with_the_routers_tokenizer_chats_and_text_equal_vllm_http(
    name: str, route: str, body: dict[str, Any], grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str
) -> None:
    """router.generation renders the chat and detokenizes: same ids and text as vLLM."""
    config = make_config(workers=regular(_grpc_url(grpc_engine)), tokenizer_path=model)
    async with running_router(config) as router:
        status, ours = await _json(router, {"model": model, "return_token_ids": True, **body}, route)
    assert status == 200, ours
    _assert_same_answer(name, ours["choices"][0], ref_choice(recorded, name))


async def test_without_a_tokenizer_the_router_fetches_the_engines_and_serves_chats(
    grpc_engine: ManagedProcess, recorded: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    """No --tokenizer-path: GetTokenizer at registration, then chats and text as vLLM HTTP."""
    cache = tmp_path / "tokenizers"
    async with running_router(_fetching(grpc_engine, cache)) as router:
        for name in ("chat", "text"):
            route, body = recorded[name]["route"], recorded[name]["body"]
            status, ours = await _json(router, {"model": str(model_dir), **body}, route)
            assert status == 200, ours
            _assert_same_answer(name, ours["choices"][0], ref_choice(recorded, name))
        # a request naming no model gets the one model's tokenizer
        status, ours = await _json(router, recorded["chat"]["body"], "/v1/chat/completions")
        assert status == 200 and ours["choices"][0]["token_ids"] == ref_choice(recorded, "chat")["token_ids"]
    (fetched,) = cache.iterdir()  # one bundle, unpacked by its digest
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (fetched / name).read_bytes() == (model_dir / name).read_bytes()
    # a second router finds the bundle unpacked and serves as well
    async with running_router(_fetching(grpc_engine, cache)) as router:
        status, ours = await _json(router, {"model": str(model_dir), **recorded["chat"]["body"]}, "/v1/chat/completions")
        assert status == 200 and ours["choices"][0]["token_ids"] == ref_choice(recorded, "chat")["token_ids"]
    assert list(cache.iterdir()) == [fetched]


# vLLM's neutral values for the fields GENERATION_DEFAULTS sets: what the servicer uses unset.
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}


@pytest.mark.parametrize("name", ["defaults_chat", "defaults_text"])
async def test_unset_sampling_fields_get_the_models_defaults_as_over_http(
    name: str, grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str, tmp_path: Path
) -> None:
    """No temperature, top_p, ... nor max_tokens (seeded): the model's generation_config
    decides, over HTTP and through the router over gRPC alike."""
    route, body = recorded[name]["route"], {"model": model, **recorded[name]["body"]}
    ref = ref_choice(recorded, name)
    expected_tokens = GENERATION_DEFAULTS["max_new_tokens"] if "messages" in body else 16  # chat: max_new_tokens
    # the model's max_new_tokens (chat) or vLLM's 16 (completions), unless EOS came first
    assert (
        len(ref["token_ids"]) == expected_tokens if ref["finish_reason"] == "length" else len(ref["token_ids"]) < expected_tokens
    )
    async with running_router(_fetching(grpc_engine, tmp_path)) as router:
        status, ours = await _json(router, body, route)
        assert status == 200, ours
        _assert_same_answer(name, ours["choices"][0], ref)
        # the control: vLLM's neutral values sent explicitly sample another answer, so the
        # equality above is the defaults' doing
        status, neutral = await _json(router, {**body, **NEUTRAL, "max_tokens": expected_tokens}, route)
        assert status == 200 and neutral["choices"][0]["token_ids"] != ref["token_ids"]
    # --generation-config vllm: no model defaults, the neutral answer
    async with running_router(_fetching(grpc_engine, tmp_path, generation_config="vllm")) as router:
        status, plain = await _json(router, {**body, "max_tokens": expected_tokens}, route)
        assert status == 200 and plain["choices"][0]["token_ids"] == neutral["choices"][0]["token_ids"]


async def test_a_chat_the_template_rejects_gets_vllms_http_error(
    grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str, tmp_path: Path
) -> None:
    case = recorded["template_rejected"]
    assert case["status"] == 400
    relayed = ApiError.from_upstream(400, orjson.dumps(case["answer"]), "ref").payload()  # what an HTTP worker's client gets
    assert "Conversation roles must start with user or system" in relayed["error"]["message"]
    async with running_router(_fetching(grpc_engine, tmp_path)) as router:
        status, ours = await _json(router, {"model": model, **case["body"]}, case["route"])
        assert (status, ours) == (400, relayed)
        # the worker is not blamed: the next chat is served
        status, _ = await _json(router, {"model": model, **CHAT}, "/v1/chat/completions")
        assert status == 200


def _stream_logprobs(chunks: list[Any]) -> list[tuple[str, float]]:
    out = []
    for c in chunks:
        for choice in c["choices"]:
            for entry in (choice.get("logprobs") or {}).get("content") or ():
                out.append((entry["token"], entry["logprob"]))
    return out


def _stream_ids(chunks: list[Any]) -> list[int]:
    return [t for c in chunks for choice in c["choices"] for t in choice.get("token_ids") or ()]


async def test_a_streamed_chat_has_every_tokens_logprob_as_over_http(
    grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str, tmp_path: Path
) -> None:
    """One logprob entry per generated token, in the event that carried it, even while a
    stop string's prefix is held back (smg 1.13 merges such chunks and drops them)."""
    case = recorded["chat_stream_logprobs"]
    ref_events = [e for e in case["answer"] if e != "[DONE]"]
    async with running_router(_fetching(grpc_engine, tmp_path)) as router:
        ours = await _events(router, case["route"], {"model": model, **case["body"]})
    ids = _stream_ids(ours)
    assert ids == _stream_ids(ref_events) and ids
    logprobs = _stream_logprobs(ours)
    assert len(logprobs) == len(ids)
    ref = _stream_logprobs(ref_events)
    assert [t for t, _ in logprobs] == [t for t, _ in ref]
    assert [lp for _, lp in logprobs] == pytest.approx([lp for _, lp in ref], abs=1e-4)


# -- smg (the SGLang/Shepherd Model Gateway) in gRPC mode against the same engine ----------


@pytest.fixture(scope="module")
def smg(grpc_engine: ManagedProcess, model_dir: Path) -> Iterator[ManagedProcess]:
    """smg 1.13 in gRPC mode on the module's engine, with the same model directory."""
    pytest.importorskip("smg", reason="smg is not installed (pip install smg)")
    port = free_port()
    cmd = [
        sys.executable, "-m", "smg.launch_router",
        "--worker-urls", _grpc_url(grpc_engine), "--model-path", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()), "--log-level", "warn",
    ]  # fmt: skip
    proc = ManagedProcess(cmd, name="smg-grpc", port=port)
    probe = {"model": str(model_dir), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    def serves_a_chat() -> bool:  # registered its worker and loaded the tokenizer
        try:
            return httpx.post(f"{proc.url}/v1/chat/completions", json=probe, timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        proc.wait_ready(serves_a_chat, "a chat through smg", timeout=180)
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("name", ["chat", "text"])
async def test_smg_in_grpc_mode_gives_the_same_text_as_ours(
    name: str, grpc_engine: ManagedProcess, smg: ManagedProcess, recorded: dict[str, Any], model: str, tmp_path: Path
) -> None:
    """The acceptance check of router-side processing: the same request through smg and
    through our router, both over gRPC to one engine, gives the same text."""
    route, body = recorded[name]["route"], {"model": model, **recorded[name]["body"]}
    async with httpx.AsyncClient(timeout=120) as client:  # vLLM's extension field left out for smg
        theirs = await client.post(smg.url + route, json={k: v for k, v in body.items() if k != "return_token_ids"})
    assert theirs.status_code == 200, theirs.text
    async with running_router(_fetching(grpc_engine, tmp_path)) as router:
        status, ours = await _json(router, body, route)
    assert status == 200, ours
    key = "message" if name == "chat" else "text"
    ours_text = ours["choices"][0]["message"]["content"] if key == "message" else ours["choices"][0]["text"]
    theirs_choice = theirs.json()["choices"][0]
    theirs_text = theirs_choice["message"]["content"] if key == "message" else theirs_choice["text"]
    assert ours_text == theirs_text and ours_text


async def test_smg_and_ours_on_token_id_prompts_and_logprobs(
    grpc_engine: ManagedProcess, smg: ManagedProcess, recorded: dict[str, Any], model: str, tmp_path: Path
) -> None:
    """Where smg 1.13 falls short (docs/router-side-processing.md records what it does):
    ours answers a token-id completion and a gRPC completion's logprobs like vLLM HTTP."""
    token_ids = {"model": model, **greedy(PROMPTS["short"]), "return_token_ids": True}
    text = {"model": model, **recorded["text"]["body"]}
    async with httpx.AsyncClient(timeout=120) as client:
        smg_ids = await client.post(smg.url + "/v1/completions", json=token_ids)
        smg_text = await client.post(smg.url + "/v1/completions", json=text)
    print("smg token-id completion:", smg_ids.status_code, smg_ids.text[:500])
    print("smg text completion:", smg_text.status_code, smg_text.text[:800])
    stream_case = recorded["chat_stream_logprobs"]
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", smg.url + stream_case["route"], json={"model": model, **stream_case["body"]}) as r:
            lines = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
    smg_events = [json.loads(line) for line in lines if line != "[DONE]"]
    print("smg streamed chat events:", json.dumps(smg_events)[:3000])
    print(
        "smg streamed chat:",
        len(smg_events),
        "events,",
        len(_stream_logprobs(smg_events)),
        "logprob entries,",
        len(_stream_ids(smg_events)),
        "token ids; vLLM HTTP:",
        len(_stream_ids([e for e in stream_case["answer"] if e != "[DONE]"])),
    )
    async with running_router(_fetching(grpc_engine, tmp_path)) as router:
        status, ours = await _json(router, token_ids)
        assert status == 200, ours
        _assert_same_tokens(ours["choices"][0], ref_choice(recorded, "short"))
        status, ours = await _json(router, text)
        assert status == 200, ours
        _assert_same_answer("text", ours["choices"][0], ref_choice(recorded, "text"))


async def test_the_grpc_leg_is_a_client_span_of_the_request(grpc_engine: ManagedProcess, model: str, tmp_path: Path) -> None:
    """Each Generate call is a `worker` leg span under the request's span, with the status
    the client got (an engine's refusal is an error span)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_router(_fetching(grpc_engine, tmp_path), tracer_provider=provider) as router:
        for body in ({"model": model, **CHAT}, {"model": model, **CHAT, "stream": True}):
            async with await router.post("/v1/chat/completions", body) as resp:
                assert resp.status == 200
                await resp.read()
        status, _ = await _json(router, {"model": model, "prompt": TOO_LONG, "max_tokens": 4})
        assert status == 400

        def spans_of(name: str) -> list[Any]:
            return [s for s in exporter.get_finished_spans() if s.name == name]

        # a request span ends just after its last byte went out: wait for all three
        assert await wait_for(lambda: _true(len(spans_of("POST /v1/completions")) == 1), 10)
        assert await wait_for(lambda: _true(len(spans_of("POST /v1/chat/completions")) == 2), 10)
    legs = spans_of("worker")
    assert len(legs) == 3
    requests = {s.context.span_id: s for s in spans_of("POST /v1/chat/completions") + spans_of("POST /v1/completions")}
    for leg in legs:
        assert leg.kind is SpanKind.CLIENT and leg.attributes["url.full"] == _grpc_url(grpc_engine)
        assert leg.parent is not None and leg.parent.span_id in requests
    statuses = sorted(leg.attributes["http.response.status_code"] for leg in legs)
    assert statuses == [200, 200, 400]
    (refused,) = [leg for leg in legs if leg.attributes["http.response.status_code"] == 400]
    assert refused.status.status_code is StatusCode.ERROR


async def _true(value: bool) -> bool:
    return value


async def test_the_openai_sdk_works_unchanged_against_a_grpc_worker(
    grpc_engine: ManagedProcess, recorded: dict[str, Any], model: str
) -> None:
    """The OpenAI Python SDK, as a client uses it: a chat and a streamed chat give vLLM
    HTTP's text, a text completion its text (the router renders every answer itself)."""
    from openai import AsyncOpenAI

    config = make_config(workers=regular(_grpc_url(grpc_engine)), tokenizer_path=model)
    async with running_router(config) as router:
        client = AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        chat = await client.chat.completions.create(model=model, **CHAT)
        stream = await client.chat.completions.create(model=model, stream=True, **CHAT)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        text = await client.completions.create(model=model, **TEXT)
        await client.close()
    expected = ref_choice(recorded, "chat")["message"]["content"]
    assert chat.choices[0].message.content == streamed == expected
    assert chat.choices[0].finish_reason == ref_choice(recorded, "chat")["finish_reason"]
    assert chat.usage is not None and chat.usage.completion_tokens == answer(recorded, "chat")["usage"]["completion_tokens"]
    assert text.choices[0].text == ref_choice(recorded, "text")["text"]
