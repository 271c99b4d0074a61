"""Router-side processing replays vLLM's own greedy answers and gets vLLM's JSON back.

`data/vllm_golden.json` holds real answers of vLLM's HTTP server for the tiny model
(recorded by `record_vllm_golden.py`): chat and completions, streamed and not, cut by
max_tokens and by a stop string (with and without `include_stop_str_in_output`), with
logprobs. The tiny model's byte-level output includes tokens whose bytes end inside a
character. Each case is turned back into the `GenerationChunk`s an engine sends (token
ids and logprob ids from the same answer recorded with `return_tokens_as_token_ids`),
fed through the prompt builder, detokenizer and renderer, and compared with what vLLM
returned: prompt ids, text, every token's logprob entry, finish and stop reasons,
usage. The OpenAI Python SDK parses every rendered answer and stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from router.generation.detokenize import IncrementalDetokenizer, TokenTexts
from router.generation.inputs import prompt_input
from router.generation.openai_render import AnswerRenderer, AnswerSpec
from router.generation.parsers import PlainText
from router.generation.sampling import sampling_params
from router.generation.types import GenerationChunk, TokenLogprob
from router.tokenizer import HFTokenizer

GOLDEN = json.loads((Path(__file__).parent / "data" / "vllm_golden.json").read_text())
MODEL = "tiny-llama"
STREAM_CASES = sorted(k for k in GOLDEN if GOLDEN[k]["body"].get("stream"))
WHOLE_CASES = sorted(k for k in GOLDEN if not GOLDEN[k]["body"].get("stream"))


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> HFTokenizer:
    return HFTokenizer(tiny_llama)


def _id(token: str) -> int:
    assert token.startswith("token_id:"), token
    return int(token.split(":", 1)[1])


def _token_logprobs(logprobs: dict[str, Any] | None, chat: bool) -> tuple[TokenLogprob, ...] | None:
    """vLLM's logprobs (recorded with tokens as ids) as the engine's TokenLogprobs."""
    if logprobs is None:
        return None
    if chat:
        return tuple(
            TokenLogprob(_id(e["token"]), e["logprob"], tuple((_id(t["token"]), t["logprob"]) for t in e["top_logprobs"]))
            for e in logprobs["content"]
        )
    return tuple(
        TokenLogprob(_id(tok), lp, tuple((_id(t), v) for t, v in top.items()))
        for tok, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
    )


def _choice_events(events: list[Any]) -> list[dict[str, Any]]:
    return [e for e in events if e != "[DONE]" and e["choices"] and "token_ids" in e["choices"][0]]


def _engine_chunks(case: dict[str, Any], chat: bool) -> list[GenerationChunk]:
    """What the engine would have sent for this answer."""
    answer, as_ids = case["answer"], case.get("answer_as_ids", case["answer"])
    if not case["body"].get("stream"):
        choice, usage = answer["choices"][0], answer["usage"]
        return [
            GenerationChunk(
                token_ids=tuple(choice["token_ids"]),
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                logprobs=_token_logprobs(as_ids["choices"][0]["logprobs"], chat),
                finish_reason=choice["finish_reason"],
                matched_stop=choice["stop_reason"],
            )
        ]
    usage = answer[-2]["usage"] if "usage" in answer[-2] else None
    prompt_tokens = usage["prompt_tokens"] if usage else 0
    chunks, done = [], 0
    for event, event_as_ids in zip(_choice_events(answer), _choice_events(as_ids), strict=True):
        choice = event["choices"][0]
        done += len(choice["token_ids"])
        chunks.append(
            GenerationChunk(
                token_ids=tuple(choice["token_ids"]),
                prompt_tokens=prompt_tokens,
                completion_tokens=done,
                logprobs=_token_logprobs(event_as_ids["choices"][0]["logprobs"], chat),
                finish_reason=choice["finish_reason"],
                matched_stop=choice.get("stop_reason"),
            )
        )
    return chunks


def _renderer(tokenizer: HFTokenizer, case: dict[str, Any]) -> tuple[AnswerRenderer, tuple[int, ...]]:
    chat = case["route"] == "/v1/chat/completions"
    body = {**case["body"], "return_token_ids": True}
    params = sampling_params(body, chat=chat)
    prompt = prompt_input(tokenizer, body, chat=chat, max_model_len=2048)
    detok = IncrementalDetokenizer(
        tokenizer.backend,
        prompt.input_ids,
        skip_special_tokens=params.skip_special_tokens,
        stop=params.stop,
        include_stop_str_in_output=params.include_stop_str_in_output,
    )
    spec = AnswerSpec.for_request(body, chat=chat, model=MODEL, logprobs=params.logprobs)
    renderer = AnswerRenderer(
        spec, detokenizer=detok, token_texts=TokenTexts(tokenizer.backend), parser=PlainText(), prompt_ids=prompt.input_ids
    )
    return renderer, prompt.input_ids


def _recorded_prompt_ids(case: dict[str, Any]) -> list[int]:
    answer = case["answer"]
    if isinstance(answer, dict):
        return answer.get("prompt_token_ids") or answer["choices"][0]["prompt_token_ids"]
    first = answer[0]
    return first.get("prompt_token_ids") or first["choices"][0]["prompt_token_ids"]


def _sdk_client(responses: Iterator[tuple[bytes, str]]) -> openai.OpenAI:
    """The real OpenAI SDK, its HTTP answered with our rendered bytes."""

    def handler(request: httpx.Request) -> httpx.Response:
        body, content_type = next(responses)
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    http_client = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="x", base_url="http://router/v1", http_client=http_client)


def _sdk_call(client: openai.OpenAI, case: dict[str, Any]) -> Any:
    body = {k: v for k, v in case["body"].items() if k not in ("model",)}
    extra = {k: body.pop(k) for k in list(body) if k in ("include_stop_str_in_output",)}
    if case["route"] == "/v1/chat/completions":
        return client.chat.completions.create(model=MODEL, extra_body=extra, **body)
    return client.completions.create(model=MODEL, extra_body=extra, **body)


@pytest.mark.parametrize("name", WHOLE_CASES)
def test_whole_answer_equals_vllm(tokenizer: HFTokenizer, name: str) -> None:
    case = GOLDEN[name]
    renderer, prompt_ids = _renderer(tokenizer, case)
    assert list(prompt_ids) == _recorded_prompt_ids(case), "prompt ids differ from vLLM's"
    ours = renderer.response(_engine_chunks(case, renderer.spec.chat))
    theirs = case["answer"]
    mine, ref = ours["choices"][0], theirs["choices"][0]
    if renderer.spec.chat:
        assert mine["message"]["content"] == ref["message"]["content"]
        assert mine["message"]["role"] == "assistant"
    else:
        assert mine["text"] == ref["text"]
    assert mine["logprobs"] == ref["logprobs"]
    assert (mine["finish_reason"], mine["stop_reason"], mine["token_ids"]) == (
        ref["finish_reason"],
        ref["stop_reason"],
        ref["token_ids"],
    )
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert ours["usage"][key] == theirs["usage"][key]
    assert ours["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert ours["id"].startswith("chatcmpl-" if renderer.spec.chat else "cmpl-")

    parsed = _sdk_call(_sdk_client(iter([(orjson.dumps(ours), "application/json")])), case)
    text = parsed.choices[0].message.content if renderer.spec.chat else parsed.choices[0].text
    assert text == (ref["message"]["content"] if renderer.spec.chat else ref["text"])
    assert parsed.usage.prompt_tokens_details.cached_tokens == 0
    if ref["logprobs"] is not None:
        lp = parsed.choices[0].logprobs
        n = len(lp.content) if renderer.spec.chat else len(lp.tokens)
        assert n == len(ref["token_ids"])


def _events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ")
            data = block[len(b"data: ") :]
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def _stream_text(events: list[Any], chat: bool) -> str:
    key = "content" if chat else "text"
    return "".join(
        (e["choices"][0]["delta"].get(key) if chat else e["choices"][0][key]) or ""
        for e in events
        if e != "[DONE]" and e["choices"]
    )


def _stream_logprobs(events: list[Any], chat: bool) -> Any:
    lps = [e["choices"][0]["logprobs"] for e in events if e != "[DONE]" and e["choices"] and e["choices"][0]["logprobs"]]
    if chat:
        return [entry for lp in lps for entry in lp["content"]]
    return {k: [x for lp in lps for x in lp[k]] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


@pytest.mark.parametrize("name", STREAM_CASES)
def test_stream_equals_vllm(tokenizer: HFTokenizer, name: str) -> None:
    case = GOLDEN[name]
    renderer, prompt_ids = _renderer(tokenizer, case)
    chat = renderer.spec.chat
    assert list(prompt_ids) == _recorded_prompt_ids(case)
    raw = b"".join(event for chunk in _engine_chunks(case, chat) for event in renderer.stream_events(chunk))
    ours, theirs = _events(raw), case["answer"]

    assert ours[-1] == "[DONE]" and theirs[-1] == "[DONE]"
    assert _stream_text(ours, chat) == _stream_text(theirs, chat)
    assert _stream_logprobs(ours, chat) == _stream_logprobs(theirs, chat)
    # One event per engine chunk, each with its own tokens' logprobs, as vLLM sends.
    assert len(_choice_events(ours)) == len(_choice_events(theirs))
    for mine, ref in zip(_choice_events(ours), _choice_events(theirs), strict=True):
        assert mine["choices"][0]["token_ids"] == ref["choices"][0]["token_ids"]
        assert mine["choices"][0]["finish_reason"] == ref["choices"][0]["finish_reason"]
        if not case["body"].get("stop"):  # no stop string: nothing held, so the same deltas
            assert _stream_text([mine], chat) == _stream_text([ref], chat)
    if chat:
        assert ours[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if case["body"].get("stream_options", {}).get("include_usage"):
        usage = ours[-2]["usage"]
        assert ours[-2]["choices"] == []
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert usage[key] == theirs[-2]["usage"][key]

    stream = _sdk_call(_sdk_client(iter([(raw, "text/event-stream")])), case)
    parsed = list(stream)
    text = "".join(
        ((c.choices[0].delta.content if chat else c.choices[0].text) or "") for c in parsed if c.choices
    )
    assert text == _stream_text(theirs, chat)
    assert parsed[-1 if not case["body"].get("stream_options") else -2].choices[0].finish_reason == (
        _choice_events(theirs)[-1]["choices"][0]["finish_reason"]
    )


def test_golden_output_has_tokens_whose_bytes_end_inside_a_character() -> None:
    """The replay covers held-back multi-byte text: some tokens show as '' in logprobs."""
    tokens = GOLDEN["completion"]["answer"]["choices"][0]["logprobs"]["tokens"]
    assert "" in tokens
