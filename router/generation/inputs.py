"""The prompt's token ids, as vLLM's OpenAI server computes them.

Chat: the model's chat template rendered in the router (`router.chat_template`), then
encoded *without* the tokenizer's special tokens (the template writes BOS itself, and
vLLM's chat path passes `add_special_tokens=False`). Completions: a text prompt encoded
*with* them (vLLM's default for completions), or the token ids the client sent. A prompt
longer than the model's context is refused with vLLM's message.

Why an async entry point: rendering and encoding a long prompt takes milliseconds of
CPU (see docs/router-side-processing.md for the measured cost: ~1.5 us per token, so
~50 ms for 32k tokens). Prompts above `OFF_LOOP_CHARS` are prepared in a worker thread;
that helps only because `HFTokenizer.encode_text` encodes through `encode_batch`, which
releases the GIL (`Tokenizer.encode` holds it: the loop then stalls as long as inline).
Short ones are prepared inline, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from router.chat_template import ChatTemplateError
from router.errors import ChatTemplateRejected, InvalidGenerationRequest

# Prompts (rendered chat or completions text) longer than this many characters are
# tokenized off the event loop: about 1k tokens, where encoding starts to cost ~1 ms.
OFF_LOOP_CHARS = 4096


class PromptTokenizer(Protocol):
    """What preparing a prompt needs of the tokenizer (`router.tokenizer.HFTokenizer`)."""

    def encode_text(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def render_chat(self, body: Mapping[str, Any]) -> str | None: ...


@dataclass(frozen=True)
class PromptInput:
    """The ids the engine runs, and the prompt text (for logs; '' when ids were sent)."""

    input_ids: tuple[int, ...]
    text: str


def _chat_input(tokenizer: PromptTokenizer, body: Mapping[str, Any]) -> PromptInput:
    try:
        text = tokenizer.render_chat(body)
    except ChatTemplateError as exc:
        if exc.reason is not None:  # the template's raise_exception: vLLM's body
            raise ChatTemplateRejected(exc.reason) from None
        raise InvalidGenerationRequest(str(exc), param="messages") from None
    if text is None:
        raise InvalidGenerationRequest(
            "the model has no chat template, so the router cannot render this chat; "
            "start the router with --chat-template, or use /v1/completions",
            param="messages",
        )
    return PromptInput(tuple(tokenizer.encode_text(text, add_special_tokens=False)), text)


def _completion_input(tokenizer: PromptTokenizer, prompt: Any) -> PromptInput:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one is that prompt
    if isinstance(prompt, str):
        return PromptInput(tuple(tokenizer.encode_text(prompt, add_special_tokens=True)), prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return PromptInput(tuple(prompt), "")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise InvalidGenerationRequest(
            "batched prompts are not supported by the router's token-level path; send one prompt per request",
            param="prompt",
        )
    raise InvalidGenerationRequest("prompt must be a string, a list of token ids, or a list of one of those", param="prompt")


def _check_length(ids: Sequence[int], max_model_len: int | None) -> None:
    if max_model_len is not None and len(ids) > max_model_len:
        raise InvalidGenerationRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"contains {len(ids)} input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt.",
            param="input_tokens",
        )


def prompt_input(
    tokenizer: PromptTokenizer, body: Mapping[str, Any], *, chat: bool, max_model_len: int | None
) -> PromptInput:
    """The prompt of a chat (`chat=True`) or completions body, checked against the model's
    context length (`max_model_len`: the engine's, or config.json's
    `max_position_embeddings`; None skips the check). Raises `InvalidGenerationRequest`."""
    result = _chat_input(tokenizer, body) if chat else _completion_input(tokenizer, body.get("prompt"))
    _check_length(result.input_ids, max_model_len)
    return result


def _prompt_chars(body: Mapping[str, Any], chat: bool) -> int:
    """A cheap size estimate of the text to tokenize, without rendering it."""
    if not chat:
        prompt = body.get("prompt")
        return len(prompt) if isinstance(prompt, str) else 0
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, Mapping))
    return total


async def prompt_input_async(
    tokenizer: PromptTokenizer,
    body: Mapping[str, Any],
    *,
    chat: bool,
    max_model_len: int | None,
    off_loop_chars: int = OFF_LOOP_CHARS,
) -> PromptInput:
    """`prompt_input`, in a worker thread when the prompt is long (see the module doc)."""
    if _prompt_chars(body, chat) < off_loop_chars:
        return prompt_input(tokenizer, body, chat=chat, max_model_len=max_model_len)
    return await asyncio.to_thread(prompt_input, tokenizer, body, chat=chat, max_model_len=max_model_len)
