"""OpenAI rendering of engine chunks: shapes, logprobs, usage, errors, the parser hook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai.types
import openai.types.chat
import orjson
import pytest
from tokenizers import Tokenizer

from router.errors import ApiError
from router.generation import parsers
from router.generation.detokenize import IncrementalDetokenizer, TokenTexts
from router.generation.openai_render import AnswerRenderer, AnswerSpec, response_id
from router.generation.parsers import MessageDelta, PlainText, parser_for, register_parser
from router.generation.types import GenerationChunk, TokenLogprob
from router.render import SSE_DONE


@pytest.fixture(scope="module")
def tok(tiny_llama: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))


def _renderer(tok: Tokenizer, *, chat: bool, logprobs: int | None = 1, usage: bool = True, parser: Any = None, **detok: Any):
    spec = AnswerSpec(chat=chat, model="m", logprobs=logprobs, include_usage=usage, id=response_id(chat), created=7)
    return AnswerRenderer(
        spec,
        detokenizer=IncrementalDetokenizer(tok, [5], **detok),
        token_texts=TokenTexts(tok),
        parser=parser or PlainText(),
        prompt_ids=(5,),
    )


def _lp(token_id: int, alt: int) -> TokenLogprob:
    return TokenLogprob(token_id, -0.5, ((token_id, -0.5), (alt, -1.5)))


def _chunks(ids: list[int], *, finish: Any = "length", matched: Any = None, logprobs: bool = True) -> list[GenerationChunk]:
    return [
        GenerationChunk(
            (t,),
            prompt_tokens=4,
            completion_tokens=i + 1,
            cached_tokens=2,
            logprobs=(_lp(t, 9),) if logprobs else None,
            finish_reason=finish if i == len(ids) - 1 else None,
            matched_stop=matched if i == len(ids) - 1 else None,
        )
        for i, t in enumerate(ids)
    ]


def _events(raw: list[bytes]) -> list[Any]:
    out = []
    for event in raw:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        data = event[6:-2]
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def test_chat_stream_of_an_emoji_gives_every_token_its_logprob(tok: Tokenizer) -> None:
    ids = tok.encode("a😀", add_special_tokens=False).ids
    r = _renderer(tok, chat=True)
    raw = [e for c in _chunks(ids) for e in r.stream_events(c)]
    events = _events(raw)
    assert raw[-1] == SSE_DONE
    role, *body, usage, done = events
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(body) == len(ids)  # one event per engine chunk
    deltas = [e["choices"][0]["delta"]["content"] for e in body]
    assert deltas == ["a", *[""] * (len(ids) - 2), "😀"]
    entries = [e["choices"][0]["logprobs"]["content"] for e in body]
    assert all(len(x) == 1 for x in entries)
    tokens = [x[0]["token"] for x in entries]
    assert tokens == ["a", *[""] * (len(ids) - 2), "😀"]
    assert entries[-1][0]["bytes"] == list("😀".encode())
    assert body[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 4,
        "total_tokens": 4 + len(ids),
        "completion_tokens": len(ids),
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    for e in events[:-1]:
        chunk = openai.types.chat.ChatCompletionChunk.model_validate(e)
        assert chunk.id.startswith("chatcmpl-") and chunk.object == "chat.completion.chunk"
    assert r.stream_events(_chunks(ids)[0]) == []  # nothing after the end


def test_completion_stream_offsets_run_across_chunks(tok: Tokenizer) -> None:
    ids = tok.encode("ab cd", add_special_tokens=False).ids
    r = _renderer(tok, chat=False, usage=False)
    events = _events([e for c in _chunks(ids) for e in r.stream_events(c)])
    assert events[-1] == "[DONE]"
    body = events[:-1]
    offsets = [x for e in body for x in e["choices"][0]["logprobs"]["text_offset"]]
    tokens = [x for e in body for x in e["choices"][0]["logprobs"]["tokens"]]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert "".join(e["choices"][0]["text"] for e in body) == "ab cd"
    # (the SDK's stream parser does not validate; its type demands a finish_reason)
    assert openai.types.Completion.model_validate(body[-1]).choices[0].finish_reason == "length"


def test_a_stop_token_is_reported_and_not_shown(tok: Tokenizer) -> None:
    ids = [*tok.encode("hi", add_special_tokens=False).ids, 1]
    answer = _renderer(tok, chat=True).response(_chunks(ids, finish="stop", matched=1))
    choice = answer["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"], choice["stop_reason"]) == ("hi", "stop", 1)
    # the stop token still has its logprob entry, as in vLLM
    assert [e["token"] for e in choice["logprobs"]["content"]][-1] == "</s>"
    parsed = openai.types.chat.ChatCompletion.model_validate(answer)
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 2


def test_a_stop_string_cut_in_a_whole_answer(tok: Tokenizer) -> None:
    ids = tok.encode("one two", add_special_tokens=False).ids
    r = _renderer(tok, chat=False, stop=["two"])
    answer = r.response(_chunks(ids, finish="stop", matched="two"))
    assert answer["choices"][0]["text"] == "one "
    assert answer["choices"][0]["stop_reason"] == "two"
    assert len(answer["choices"][0]["logprobs"]["tokens"]) == len(ids)
    openai.types.Completion.model_validate(answer)


def test_completions_top_logprobs_hold_n_plus_the_sampled_token(tok: Tokenizer) -> None:
    chunk = GenerationChunk(
        (70,), 1, 1, logprobs=(TokenLogprob(70, -3.0, ((71, -0.1), (72, -0.2))),), finish_reason="length"
    )
    top = _renderer(tok, chat=False, logprobs=1).response([chunk])["choices"][0]["logprobs"]["top_logprobs"][0]
    assert list(top.values()) == [-3.0, -0.1]  # sampled first (vLLM), then the top one
    chat = _renderer(tok, chat=True, logprobs=-1).response([chunk])["choices"][0]["logprobs"]["content"][0]
    assert [t["logprob"] for t in chat["top_logprobs"]] == [-3.0, -0.1, -0.2]


def test_minus_infinity_logprobs_are_clamped(tok: Tokenizer) -> None:
    chunk = GenerationChunk((70,), 1, 1, logprobs=(TokenLogprob(70, float("-inf")),), finish_reason="length")
    answer = _renderer(tok, chat=True, logprobs=0).response([chunk])
    assert answer["choices"][0]["logprobs"]["content"][0]["logprob"] == -9999.0
    json.loads(orjson.dumps(answer))


def test_no_logprobs_asked_renders_null(tok: Tokenizer) -> None:
    ids = tok.encode("x", add_special_tokens=False).ids
    answer = _renderer(tok, chat=False, logprobs=None).response(_chunks(ids, logprobs=False))
    assert answer["choices"][0]["logprobs"] is None


def test_an_engine_error_is_an_api_error(tok: Tokenizer) -> None:
    chunk = GenerationChunk((70,), 1, 1, finish_reason="error")
    with pytest.raises(ApiError) as info:
        _renderer(tok, chat=True).stream_events(chunk)
    assert info.value.status == 500 and "engine failed" in info.value.message
    with pytest.raises(ApiError):
        _renderer(tok, chat=False).response([chunk])


def test_an_unfinished_whole_answer_is_a_502(tok: Tokenizer) -> None:
    with pytest.raises(ApiError) as info:
        _renderer(tok, chat=True).response(_chunks([70, 71])[:1])
    assert info.value.status == 502


def test_chunks_without_tokens_before_the_first_send_only_the_role(tok: Tokenizer) -> None:
    r = _renderer(tok, chat=True)
    events = _events(r.stream_events(GenerationChunk((), 4, 0)))
    assert len(events) == 1 and events[0]["choices"][0]["delta"]["role"] == "assistant"


class _ThinkParser:
    """A model family that writes `<think>...</think>` then a tool call as JSON."""

    def __init__(self) -> None:
        self.seen = ""

    def parse(self, text: str, *, finished: bool) -> MessageDelta:
        self.seen += text
        if not finished:
            return MessageDelta()
        reasoning, _, rest = self.seen.partition("|")
        return MessageDelta(
            content="",
            reasoning=reasoning,
            tool_calls=({"id": "call_1", "type": "function", "function": {"name": rest.strip(), "arguments": "{}"}},),
        )


def test_the_parser_hook_per_model_family(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(parser_for(None), PlainText)
    assert isinstance(parser_for("llama"), PlainText)
    monkeypatch.setattr(parsers, "_PARSERS", {})  # the registration stays in this test
    register_parser("test-think", _ThinkParser)
    parser = parser_for("test-think")
    assert isinstance(parser, _ThinkParser) and parser_for("test-think") is not parser  # one per answer

    ids = [*tok.encode("why | lookup", add_special_tokens=False).ids, 1]  # ends with EOS
    answer = _renderer(tok, chat=True, parser=parser).response(_chunks(ids, finish="stop"))
    message = answer["choices"][0]["message"]
    assert message["reasoning"] == "why "
    assert message["tool_calls"][0]["function"]["name"] == "lookup"
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    parsed = openai.types.chat.ChatCompletion.model_validate(answer)
    assert parsed.choices[0].message.tool_calls is not None

    r = _renderer(tok, chat=True, parser=parser_for("test-think"))
    events = _events([e for c in _chunks(ids, finish="stop") for e in r.stream_events(c)])
    last = [e for e in events if e != "[DONE]" and e["choices"]][-1]
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    assert last["choices"][0]["delta"]["reasoning"] == "why "
