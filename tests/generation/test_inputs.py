"""Prompt ids as vLLM computes them, the context-length check, and the async entry point."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from router.errors import InvalidGenerationRequest
from router.generation.inputs import PromptInput, prompt_input, prompt_input_async
from router.tokenizer import HFTokenizer

CHAT = {"messages": [{"role": "user", "content": "hi 😀 世界"}]}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> HFTokenizer:
    return HFTokenizer(tiny_llama)


def test_chat_is_the_rendered_template_encoded_without_special_tokens(tokenizer: HFTokenizer) -> None:
    got = prompt_input(tokenizer, CHAT, chat=True, max_model_len=None)
    text = tokenizer.render_chat(CHAT)
    assert text is not None and got.text == text
    assert list(got.input_ids) == tokenizer.backend.encode(text, add_special_tokens=False).ids


def test_completion_text_is_encoded_with_special_tokens(tokenizer: HFTokenizer) -> None:
    got = prompt_input(tokenizer, {"prompt": "Once 東京"}, chat=False, max_model_len=None)
    assert list(got.input_ids) == tokenizer.backend.encode("Once 東京", add_special_tokens=True).ids
    assert got.text == "Once 東京"


@pytest.mark.parametrize("prompt", [[5, 6, 7], [[5, 6, 7]]])
def test_completion_token_ids_are_used_as_sent(tokenizer: HFTokenizer, prompt: Any) -> None:
    assert prompt_input(tokenizer, {"prompt": prompt}, chat=False, max_model_len=None) == PromptInput((5, 6, 7), "")


def test_a_batch_of_one_text_prompt_is_that_prompt(tokenizer: HFTokenizer) -> None:
    one = prompt_input(tokenizer, {"prompt": ["abc"]}, chat=False, max_model_len=None)
    assert one == prompt_input(tokenizer, {"prompt": "abc"}, chat=False, max_model_len=None)


@pytest.mark.parametrize("prompt", [["a", "b"], [[1], [2]]])
def test_batched_prompts_are_refused(tokenizer: HFTokenizer, prompt: Any) -> None:
    with pytest.raises(InvalidGenerationRequest, match="one prompt per request") as info:
        prompt_input(tokenizer, {"prompt": prompt}, chat=False, max_model_len=None)
    assert info.value.param == "prompt"


@pytest.mark.parametrize("prompt", [None, 5, [], [1, "a"]])
def test_malformed_prompts_are_refused(tokenizer: HFTokenizer, prompt: Any) -> None:
    with pytest.raises(InvalidGenerationRequest):
        prompt_input(tokenizer, {"prompt": prompt}, chat=False, max_model_len=None)


def test_a_prompt_longer_than_the_context_gets_vllms_message(tokenizer: HFTokenizer) -> None:
    assert len(prompt_input(tokenizer, {"prompt": list(range(8))}, chat=False, max_model_len=8).input_ids) == 8
    with pytest.raises(InvalidGenerationRequest) as info:
        prompt_input(tokenizer, {"prompt": list(range(9))}, chat=False, max_model_len=8)
    assert info.value.status == 400
    assert info.value.message == (
        "This model's maximum context length is 8 tokens. However, your prompt contains 9 input tokens, "
        "which exceeds this limit even without any output tokens. Please reduce the length of the input prompt."
    )


def test_a_chat_without_template_is_a_clear_400(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_llama / "tokenizer.json").read_bytes())
    bare = HFTokenizer(tmp_path)
    with pytest.raises(InvalidGenerationRequest, match="--chat-template"):
        prompt_input(bare, CHAT, chat=True, max_model_len=None)


def test_a_template_that_rejects_the_chat_is_a_400(tiny_llama: Path) -> None:
    strict = HFTokenizer(tiny_llama, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidGenerationRequest) as info:
        prompt_input(strict, CHAT, chat=True, max_model_len=None)
    # vLLM's HTTP body for the same refusal: the template's words, BadRequestError, 400
    assert info.value.payload()["error"] == {
        "message": "roles must alternate",
        "type": "BadRequestError",
        "param": None,
        "code": "400",
    }


class _ThreadRecorder:
    """Wraps the real tokenizer and notes the thread each encode ran on."""

    def __init__(self, inner: HFTokenizer) -> None:
        self._inner = inner
        self.threads: list[int] = []

    def encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        self.threads.append(threading.get_ident())
        return self._inner.encode_text(text, add_special_tokens=add_special_tokens)

    def render_chat(self, body: Mapping[str, Any]) -> str | None:
        return self._inner.render_chat(body)


@pytest.mark.parametrize("chat", [True, False])
def test_long_prompts_are_prepared_off_the_event_loop(tokenizer: HFTokenizer, chat: bool) -> None:
    recorder = _ThreadRecorder(tokenizer)

    def body(text: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}

    async def main() -> tuple[PromptInput, PromptInput, int]:
        short = await prompt_input_async(recorder, body("short"), chat=chat, max_model_len=None, off_loop_chars=100)
        long = await prompt_input_async(recorder, body("x" * 100), chat=chat, max_model_len=None, off_loop_chars=100)
        return short, long, threading.get_ident()

    short, long, loop_thread = asyncio.run(main())
    assert recorder.threads[0] == loop_thread
    assert recorder.threads[1] != loop_thread
    assert long == prompt_input(tokenizer, body("x" * 100), chat=chat, max_model_len=None)
    assert short == prompt_input(tokenizer, body("short"), chat=chat, max_model_len=None)


def test_async_errors_are_the_same_400s(tokenizer: HFTokenizer) -> None:
    with pytest.raises(InvalidGenerationRequest, match="maximum context length is 4"):
        asyncio.run(prompt_input_async(tokenizer, {"prompt": "y" * 50}, chat=False, max_model_len=4, off_loop_chars=10))
