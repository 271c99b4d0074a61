"""The gRPC leg's OpenAICodec with prepare: the prompt tokenized once, the model's
tokenizer per request (configured or fetched), sampling defaults, and the refusals."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.errors import ApiError, ChatTemplateRejected
from router.generation.defaults import SamplingDefaults
from router.prepare import CHAT_ROUTE, COMPLETIONS_ROUTE, PreparedRequest, prepare_request, prepare_request_async
from router.tokenizer import HFTokenizer, ModelTokenizers, Tokenizer
from router.transports.openai_codec import OpenAICodec
from router.workers.worker import Worker

WORKER = Worker("grpc://127.0.0.1:1", models=frozenset({"m"}))
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Tell me about the weather"}], "max_tokens": 4}


class CountingTokenizer:
    """The real tokenizer, counting what preparing prompts costs (renders, encodes)."""

    def __init__(self, inner: HFTokenizer) -> None:
        self._inner = inner
        self.sampling_defaults: SamplingDefaults = inner.sampling_defaults
        self.renders = 0
        self.encodes = 0

    def encode(self, text: str) -> list[int]:
        self.encodes += 1
        return self._inner.encode(text)

    def encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        self.encodes += 1
        return self._inner.encode_text(text, add_special_tokens=add_special_tokens)

    def render_chat(self, body: Mapping[str, Any]) -> str | None:
        self.renders += 1
        return self._inner.render_chat(body)

    @property
    def backend(self) -> Any:
        return self._inner.backend


def _prepared(body: dict[str, Any], tokenizer: Tokenizer | ModelTokenizers | None, route: str = CHAT_ROUTE) -> PreparedRequest:
    return prepare_request(
        route, orjson.dumps(body), {}, request_id_headers=["x-request-id"], session_header="x-session", tokenizer=tokenizer
    )


@pytest.fixture
def tokenizer(tiny_llama: Path) -> HFTokenizer:
    return HFTokenizer(tiny_llama)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT_ROUTE, CHAT),
        (COMPLETIONS_ROUTE, {"model": "m", "prompt": "The quick brown fox"}),
    ],
)
async def test_the_prompt_is_tokenized_once(route: str, body: dict[str, Any], tokenizer: HFTokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    prepared = _prepared(body, ModelTokenizers(counting), route)
    assert (counting.renders, counting.encodes) == ((1 if route == CHAT_ROUTE else 0), 1)
    request = await OpenAICodec(ModelTokenizers(counting)).request(prepared, WORKER)
    assert (counting.renders, counting.encodes) == ((1 if route == CHAT_ROUTE else 0), 1)  # nothing more
    # the ids placement keyed on are the ids the engine runs, as vLLM tokenizes them
    assert list(request.input_ids) == prepared.descriptor.routing_tokens
    if route == CHAT_ROUTE:
        text = tokenizer.render_chat(body)
        assert text is not None and request.text == text
        assert request.input_ids == tuple(tokenizer.encode_text(text, add_special_tokens=False))
    else:
        assert request.input_ids == tuple(tokenizer.encode_text("The quick brown fox", add_special_tokens=True))


async def test_a_chat_the_template_rejects_routes_by_text_and_the_codec_refuses_it(tiny_llama: Path) -> None:
    strict = HFTokenizer(tiny_llama, chat_template="{{ raise_exception('Conversation roles must alternate') }}")
    prepared = _prepared(CHAT, strict)
    assert prepared.prompt is None and prepared.descriptor.routing_text == "user: Tell me about the weather"
    with pytest.raises(ChatTemplateRejected) as info:
        await OpenAICodec(ModelTokenizers(strict)).request(prepared, WORKER)
    assert info.value.status == 400 and info.value.message == "Conversation roles must alternate"


async def test_a_model_without_tokenizer_gets_the_token_id_path(tokenizer: HFTokenizer) -> None:
    tokenizers = ModelTokenizers()
    tokenizers.add("other", tokenizer)  # fetched for another model only
    codec = OpenAICodec(tokenizers)
    prepared = _prepared({"model": "m", "prompt": [5, 6, 7], "max_tokens": 2}, tokenizers, COMPLETIONS_ROUTE)
    assert prepared.tokenizer is None
    request = await codec.request(prepared, WORKER)
    assert request.input_ids == (5, 6, 7)
    with pytest.raises(ApiError) as info:
        await codec.request(_prepared(CHAT, tokenizers), WORKER)
    assert info.value.status == 501 and "--tokenizer-path" in info.value.message


async def test_fetched_tokenizers_serve_their_model_and_requests_naming_none(tokenizer: HFTokenizer) -> None:
    tokenizers = ModelTokenizers()
    assert tokenizers.for_model("m") is None and not tokenizers.has("m") and tokenizers.empty
    tokenizers.add("m", tokenizer)
    assert not tokenizers.empty
    assert tokenizers.has("m") and tokenizers.for_model("m") is tokenizer
    assert tokenizers.for_model(None) is tokenizer  # one model: a request naming none gets it
    unnamed = _prepared({k: v for k, v in CHAT.items() if k != "model"}, tokenizers)
    assert unnamed.tokenizer is tokenizer and unnamed.prompt is not None
    tokenizers.add("n", tokenizer)
    assert tokenizers.for_model(None) is None  # two: ambiguous, the worker's model decides
    unnamed = _prepared({k: v for k, v in CHAT.items() if k != "model"}, tokenizers)
    assert unnamed.tokenizer is None
    request = await OpenAICodec(tokenizers).request(unnamed, WORKER)
    assert unnamed.tokenizer is tokenizer and request.text.endswith("<|assistant|>")
    # a configured tokenizer serves every model
    assert ModelTokenizers(tokenizer).for_model("anything") is tokenizer


async def test_unset_sampling_fields_get_the_models_defaults(tiny_llama: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny_llama / name).read_bytes())
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_k": 20, "max_new_tokens": 9}))
    tokenizers = ModelTokenizers(HFTokenizer(tmp_path))
    chat = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    request = await OpenAICodec(tokenizers).request(_prepared(chat, tokenizers), WORKER)
    s = request.sampling
    assert (s.temperature, s.top_k, s.max_tokens, s.top_p) == (0.6, 20, 9, None)
    request = await OpenAICodec(tokenizers).request(_prepared({**chat, "temperature": 0}, tokenizers), WORKER)
    assert request.sampling.temperature == 0.0


class ThreadNoting(CountingTokenizer):
    """Notes the thread each encode ran on."""

    def __init__(self, inner: HFTokenizer) -> None:
        super().__init__(inner)
        self.threads: list[int] = []

    def encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        self.threads.append(threading.get_ident())
        return super().encode_text(text, add_special_tokens=add_special_tokens)


@pytest.mark.parametrize(("words", "off_loop"), [(10, False), (2000, True)])
async def test_a_long_body_is_prepared_off_the_event_loop(words: int, off_loop: bool, tokenizer: HFTokenizer) -> None:
    noting = ThreadNoting(tokenizer)
    body = {"model": "m", "messages": [{"role": "user", "content": "weather " * words}]}
    prepared = await prepare_request_async(
        CHAT_ROUTE, orjson.dumps(body), {}, request_id_headers=[], session_header="x", tokenizer=ModelTokenizers(noting)
    )
    assert prepared.prompt is not None and len(noting.threads) == 1
    assert (noting.threads[0] != threading.get_ident()) is off_loop
