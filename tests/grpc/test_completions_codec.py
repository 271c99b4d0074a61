"""The gRPC leg's completions codec: OpenAI body -> GenerationRequest, chunks -> OpenAI JSON/SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from router.errors import ApiError
from router.generation.sampling import COMPLETIONS_DEFAULT_MAX_TOKENS
from router.generation.types import GenerationChunk, TokenLogprob
from router.prepare import CHAT_ROUTE, COMPLETIONS_ROUTE, prepare_request
from router.transports.completions_codec import CompletionsCodec
from router.workers.worker import Worker

WORKER = Worker("grpc://127.0.0.1:1", models=frozenset({"m"}))


def _prepared(body: dict, route: str = COMPLETIONS_ROUTE):
    return prepare_request(route, orjson.dumps(body), {}, request_id_headers=["x-request-id"], session_header="x-session")


async def test_token_prompt_and_sampling_fields() -> None:
    body = {"prompt": [1, 2, 3], "temperature": 0, "stop": "x", "logprobs": 2, "seed": 4, "ignore_eos": True}
    req = await CompletionsCodec().request(_prepared(body), WORKER)
    assert req.input_ids == (1, 2, 3) and not req.stream
    s = req.sampling
    assert s.temperature == 0.0 and s.stop == ("x",) and s.logprobs == 2 and s.seed == 4 and s.ignore_eos
    assert s.max_tokens == COMPLETIONS_DEFAULT_MAX_TOKENS and s.top_p is None


@pytest.mark.parametrize(
    ("body", "route", "status", "param"),
    [
        ({"prompt": "text, no tokenizer"}, COMPLETIONS_ROUTE, 400, "prompt"),
        ({"prompt": [[1], [2]]}, COMPLETIONS_ROUTE, 400, "prompt"),
        ({"prompt": [1], "n": 2}, COMPLETIONS_ROUTE, 400, "n"),
        ({"prompt": [1], "temperature": "hot"}, COMPLETIONS_ROUTE, 400, "temperature"),
        ({"prompt": [1], "stop": [1]}, COMPLETIONS_ROUTE, 400, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}]}, CHAT_ROUTE, 501, None),
    ],
)
async def test_what_it_cannot_run_is_a_clear_error(body: dict, route: str, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as info:
        await CompletionsCodec().request(_prepared(body, route), WORKER)
    assert info.value.status == status and info.value.param == param


async def test_body_has_token_ids_logprobs_and_usage() -> None:
    chunk = GenerationChunk(
        token_ids=(4, 5),
        prompt_tokens=3,
        completion_tokens=2,
        cached_tokens=1,
        logprobs=(TokenLogprob(4, -0.5, ((4, -0.5),)), TokenLogprob(5, -1.0, ((5, -1.0),))),
        finish_reason="length",
    )
    codec = CompletionsCodec()
    prepared = _prepared({"prompt": [1]})
    out = orjson.loads(codec.render_body(prepared, WORKER, await codec.request(prepared, WORKER), chunk))
    choice = out["choices"][0]
    assert choice["token_ids"] == [4, 5] and choice["text"] == "" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"] == [-0.5, -1.0]
    assert choice["logprobs"]["top_logprobs"] == [{"token_id:4": -0.5}, {"token_id:5": -1.0}]
    assert out["model"] == "m" and out["object"] == "text_completion"
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1}}
    assert out["usage"] == usage


async def test_stream_events_end_with_usage_and_done() -> None:
    async def chunks() -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk((4,), 3, 1)
        yield GenerationChunk((5,), 3, 2)
        yield GenerationChunk((), 3, 2, finish_reason="length")

    prepared = _prepared({"prompt": [1], "stream": True, "stream_options": {"include_usage": True}})
    codec = CompletionsCodec()
    rendered = codec.render_stream(prepared, WORKER, await codec.request(prepared, WORKER), chunks())
    raw = b"".join([c async for c in rendered]).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    parsed = [orjson.loads(e) for e in events[:-1]]
    assert [p["choices"][0]["token_ids"] for p in parsed[:3]] == [[4], [5], []]
    assert parsed[2]["choices"][0]["finish_reason"] == "length"
    assert parsed[3]["choices"] == [] and parsed[3]["usage"]["completion_tokens"] == 2
