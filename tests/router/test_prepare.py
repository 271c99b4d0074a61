"""Request validation and descriptor derivation (pure, no I/O)."""

from __future__ import annotations

import orjson
import pytest

from router.errors import ApiError
from router.prepare import CHAT_ROUTE, COMPLETIONS_ROUTE, MAX_TOKENS_LIMIT, prepare_request


def prep(route: str, body: object, headers: dict[str, str] | None = None, **kw):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return prepare_request(
        route, raw, headers or {}, request_id_headers=["x-request-id", "x-correlation-id"], session_header="x-session-id", **kw
    )


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        (CHAT_ROUTE, b"{not json", None),
        (CHAT_ROUTE, b"[1, 2]", None),
        (CHAT_ROUTE, {"model": "m"}, "messages"),
        (CHAT_ROUTE, {"messages": []}, "messages"),
        (CHAT_ROUTE, {"messages": "hi"}, "messages"),
        (CHAT_ROUTE, {"messages": [{"content": "x"}]}, "messages.0.role"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, "max_completion_tokens"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, "max_tokens"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        (CHAT_ROUTE, {"messages": [{"role": "user", "content": "x"}], "model": 3}, "model"),
        (COMPLETIONS_ROUTE, {"model": "m"}, "prompt"),
        (COMPLETIONS_ROUTE, {"prompt": []}, "prompt"),
        (COMPLETIONS_ROUTE, {"prompt": {"a": 1}}, "prompt"),
        (COMPLETIONS_ROUTE, {"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ],
)
def test_bad_requests_are_400_with_openai_fields(route: str, body: object, param: str | None) -> None:
    with pytest.raises(ApiError) as info:
        prep(route, body)
    err = info.value
    assert err.status == 400
    assert err.type == "invalid_request_error"
    if param is not None:
        assert err.param == param
    assert set(err.payload()["error"]) == {"message", "type", "param", "code"}


def test_chat_descriptor_covers_every_message_and_content_parts() -> None:
    body = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "part one "},
                    {"type": "image_url", "image_url": {"url": "u"}},
                    {"type": "text", "text": "part two"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        "max_completion_tokens": 10,
        "stream": True,
        "vendor_field": {"kept": True},
    }
    p = prep(CHAT_ROUTE, body, {"x-correlation-id": "corr-9", "x-session-id": "s1"})
    d = p.descriptor
    assert d.routing_text == "system: be brief\nuser: part one part two\nassistant: "
    assert d.model == "tiny" and d.stream is True
    assert d.request_id == "corr-9" and d.session_key == "s1"
    assert d.estimated_tokens == len(d.routing_text) // 4 + 1 + 10
    assert p.body["vendor_field"] == {"kept": True}
    assert p.raw == orjson.dumps(body)


@pytest.mark.parametrize(
    ("prompt", "text", "tokens", "batch"),
    [
        ("hello", "hello", None, 1),
        (["a", "b"], "a\nb", None, 2),
        ([5, 6, 7], "5 6 7", [5, 6, 7], 1),
        ([[1, 2], [3]], "1 2", [1, 2], 2),
    ],
)
def test_completion_prompt_forms(prompt, text, tokens, batch) -> None:
    p = prep(COMPLETIONS_ROUTE, {"prompt": prompt})
    assert p.descriptor.routing_text == text
    assert p.descriptor.routing_tokens == tokens
    assert p.batch_size == batch
    assert p.descriptor.model is None and p.descriptor.stream is False
    assert p.descriptor.request_id.startswith("atom-")


def test_tokenizer_gives_routing_tokens(tiny_llama) -> None:
    from router.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    p = prep(COMPLETIONS_ROUTE, {"prompt": "The quick brown fox"}, tokenizer=tok)
    assert p.descriptor.routing_tokens == tok.encode("The quick brown fox")
    assert p.descriptor.routing_tokens and p.descriptor.estimated_tokens == len(p.descriptor.routing_tokens)


def test_missing_tokenizer_file_says_what_to_pass(tmp_path) -> None:
    from router.tokenizer import load_tokenizer

    with pytest.raises(RuntimeError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))
