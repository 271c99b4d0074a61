"""`GenerationChunk`s -> OpenAI answers: chat.completion / text_completion JSON, and the
SSE events of a stream, shaped as vLLM's OpenAI server shapes them.

A stream gets one event per engine chunk (vLLM sends one per engine step), so every
token's logprob goes out in the event of the chunk that carried the token, each token
its own entry, even when its text is still held back (half a character, or a possible
stop string): that event's text is then '' and the text follows with a later token, as
in vLLM. Chat streams start with a role event; the finishing event carries
`finish_reason` and vLLM's `stop_reason`; with `stream_options.include_usage` a usage
event (`choices: []`) follows; `data: [DONE]` ends the stream. Usage always carries
`prompt_tokens_details.cached_tokens` (the engine's prefix-cache hits).

Chat text goes through the model family's `ResponseParser` (router.generation.parsers),
the hook for tool-call and reasoning parsing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from router.errors import ApiError
from router.generation.detokenize import IncrementalDetokenizer, TokenTexts
from router.generation.parsers import MessageDelta, ResponseParser
from router.generation.types import GenerationChunk, TokenLogprob
from router.render import SSE_DONE

# vLLM clamps -inf logprobs to this so the JSON stays valid (OpenAI does the same).
_MIN_LOGPROB = -9999.0
_CONTEXT = 4  # preceding sampled tokens a logprob token's text may need (TokenTexts)


def response_id(chat: bool) -> str:
    """An answer id as vLLM makes them: `chatcmpl-` or `cmpl-` and 16 hex digits."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{os.urandom(8).hex()}"


@dataclass(frozen=True)
class AnswerSpec:
    """What shapes one answer, from the request."""

    chat: bool
    model: str
    # Top alternatives per token, as `SamplingParams.logprobs` (None: no logprobs).
    logprobs: int | None = None
    include_usage: bool = False
    # vLLM's `return_token_ids`: prompt and output token ids in the answer.
    return_token_ids: bool = False
    id: str = ""
    created: int = 0

    @classmethod
    def for_request(cls, body: Mapping[str, Any], *, chat: bool, model: str, logprobs: int | None) -> AnswerSpec:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        return cls(
            chat=chat,
            model=model,
            logprobs=logprobs,
            include_usage=include_usage,
            return_token_ids=bool(body.get("return_token_ids")),
            id=response_id(chat),
            created=int(time.time()),
        )


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _finish_reason(chunk: GenerationChunk, tool_calls: bool) -> str | None:
    if chunk.finish_reason == "error":
        raise ApiError(
            500,
            "the engine failed while generating this answer; retry the request, and check the engine's log if it recurs",
            code="generation_error",
        )
    if chunk.finish_reason == "stop" and tool_calls:
        return "tool_calls"
    return chunk.finish_reason


class _Logprobs:
    """Renders logprob entries in either format, keeping what crosses chunks: the
    preceding sampled tokens (a token's text may complete theirs) and, for completions,
    the running text offset."""

    def __init__(self, texts: TokenTexts, top: int) -> None:
        self._texts = texts
        self._top = top
        self._sampled: list[int] = []
        self._offset = 0

    def _alternatives(self, lp: TokenLogprob) -> list[tuple[int, float]]:
        # vLLM's per-position dict: the sampled token first, then the top ones, deduplicated.
        alts = {lp.token_id: lp.logprob}
        for token_id, logprob in lp.top:
            alts.setdefault(token_id, logprob)
        return list(alts.items())

    def _entry(self, token_id: int, logprob: float, context: list[int]) -> dict[str, Any]:
        token = self._texts.text(token_id, context)
        return {"token": token, "logprob": max(logprob, _MIN_LOGPROB), "bytes": list(token.encode("utf-8", "replace"))}

    def chat(self, logprobs: Iterable[TokenLogprob]) -> dict[str, Any]:
        content = []
        for lp in logprobs:
            context = self._sampled[-_CONTEXT:]
            alts = self._alternatives(lp)
            chosen = alts if self._top == -1 else alts[: self._top]
            content.append(
                {
                    **self._entry(lp.token_id, lp.logprob, context),
                    "top_logprobs": [self._entry(t, v, context) for t, v in chosen],
                }
            )
            self._sampled.append(lp.token_id)
        return {"content": content}

    def completion(self, logprobs: Iterable[TokenLogprob]) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float] = []
        top_logprobs: list[dict[str, float]] = []
        text_offset: list[int] = []
        for lp in logprobs:
            context = self._sampled[-_CONTEXT:]
            token = self._texts.text(lp.token_id, context)
            alts = self._alternatives(lp)
            # Completions show the top N plus the sampled one (OpenAI's definition).
            chosen = alts if self._top == -1 else alts[: self._top + 1]
            tokens.append(token)
            token_logprobs.append(max(lp.logprob, _MIN_LOGPROB))
            top_logprobs.append({self._texts.text(t, context): max(v, _MIN_LOGPROB) for t, v in chosen})
            text_offset.append(self._offset)
            self._offset += len(token)
            self._sampled.append(lp.token_id)
        return {"text_offset": text_offset, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": top_logprobs}


class AnswerRenderer:
    """One answer: feed it the engine's chunks in order (`stream_events` for a stream,
    `response` for the whole answer at once)."""

    def __init__(
        self,
        spec: AnswerSpec,
        *,
        detokenizer: IncrementalDetokenizer,
        token_texts: TokenTexts,
        parser: ResponseParser,
        prompt_ids: tuple[int, ...] = (),
    ) -> None:
        self.spec = spec
        self._detok = detokenizer
        self._parser = parser
        self._prompt_ids = prompt_ids
        self._logprobs = _Logprobs(token_texts, spec.logprobs) if spec.logprobs is not None else None
        self._started = False
        self._tool_calls = False
        self._done = False
        self._prompt_sent = False  # a completions stream sends the prompt ids once

    # -- shared -----------------------------------------------------------------------------

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.spec.id, "object": obj, "created": self.spec.created, "model": self.spec.model}

    def _render_logprobs(self, chunk: GenerationChunk) -> dict[str, Any] | None:
        if self._logprobs is None or chunk.logprobs is None:
            return None
        return self._logprobs.chat(chunk.logprobs) if self.spec.chat else self._logprobs.completion(chunk.logprobs)

    def _message(self, text: str, finished: bool) -> MessageDelta:
        delta = self._parser.parse(text, finished=finished)
        self._tool_calls = self._tool_calls or bool(delta.tool_calls)
        return delta

    @staticmethod
    def _usage(chunk: GenerationChunk) -> dict[str, Any]:
        return {
            "prompt_tokens": chunk.prompt_tokens,
            "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
            "completion_tokens": chunk.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": chunk.cached_tokens},
        }

    # -- streams ----------------------------------------------------------------------------

    def stream_events(self, chunk: GenerationChunk) -> list[bytes]:
        """The SSE events for the next engine chunk (with the usage event and `[DONE]`
        after the finishing one). Raises `ApiError` when the engine reports an error."""
        if self._done:
            return []
        events: list[bytes] = []
        if self.spec.chat and not self._started:
            events.append(self._role_event())
        self._started = True
        if not chunk.token_ids and not chunk.finished:
            return events  # nothing generated yet (vLLM sends nothing either)
        text = self._detok.feed(chunk)
        logprobs = self._render_logprobs(chunk)
        choice: dict[str, Any]
        if self.spec.chat:
            choice = {"index": 0, "delta": _delta_json(self._message(text, chunk.finished)), "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs}
        choice["finish_reason"] = _finish_reason(chunk, self._tool_calls) if chunk.finished else None
        if chunk.finished or not self.spec.chat:
            choice["stop_reason"] = chunk.matched_stop
        if self.spec.return_token_ids:
            if not self.spec.chat and not self._prompt_sent:
                choice["prompt_token_ids"] = list(self._prompt_ids)  # vLLM: in the first choice
                self._prompt_sent = True
            choice["token_ids"] = list(chunk.token_ids)
        obj = self._envelope("chat.completion.chunk" if self.spec.chat else "text_completion")
        events.append(_sse({**obj, "choices": [choice]}))
        if chunk.finished:
            self._done = True
            if self.spec.include_usage:
                usage_obj = self._envelope("chat.completion.chunk" if self.spec.chat else "text_completion")
                events.append(_sse({**usage_obj, "choices": [], "usage": self._usage(chunk)}))
            events.append(SSE_DONE)
        return events

    def _role_event(self) -> bytes:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        obj = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        if self.spec.return_token_ids:
            obj["prompt_token_ids"] = list(self._prompt_ids)
        return _sse(obj)

    # -- whole answers ----------------------------------------------------------------------

    def response(self, chunks: Iterable[GenerationChunk]) -> dict[str, Any]:
        """The non-streamed answer from all of its chunks (usually one). Raises
        `ApiError` when the engine reports an error or the answer never finished."""
        text_parts: list[str] = []
        token_ids: list[int] = []
        logprob_items: list[TokenLogprob] = []
        last: GenerationChunk | None = None
        for chunk in chunks:
            text_parts.append(self._detok.feed(chunk))
            token_ids.extend(chunk.token_ids)
            if chunk.logprobs is not None:
                logprob_items.extend(chunk.logprobs)
            last = chunk
        if last is None or not last.finished:
            raise ApiError(502, "the engine ended the answer before finishing it; retry the request", code="upstream_error")
        merged = GenerationChunk(
            token_ids=tuple(token_ids),
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            logprobs=tuple(logprob_items) if self._logprobs is not None else None,
        )
        logprobs = self._render_logprobs(merged)
        text = "".join(text_parts)
        choice: dict[str, Any] = {"index": 0}
        if self.spec.chat:
            delta = self._message(text, True)
            message: dict[str, Any] = {"role": "assistant", "content": delta.content}
            if delta.reasoning is not None:
                message["reasoning"] = delta.reasoning
            if delta.tool_calls:
                message["tool_calls"] = list(delta.tool_calls)
            choice["message"] = message
        else:
            choice["text"] = text
        choice["logprobs"] = logprobs
        choice["finish_reason"] = _finish_reason(last, self._tool_calls)
        choice["stop_reason"] = last.matched_stop
        if self.spec.return_token_ids:
            choice["token_ids"] = token_ids
            if not self.spec.chat:
                choice["prompt_token_ids"] = list(self._prompt_ids)
        obj = self._envelope("chat.completion" if self.spec.chat else "text_completion")
        obj["choices"] = [choice]
        obj["usage"] = self._usage(last)
        if self.spec.return_token_ids and self.spec.chat:
            obj["prompt_token_ids"] = list(self._prompt_ids)
        return obj


def _delta_json(delta: MessageDelta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if delta.reasoning is not None:
        out["reasoning"] = delta.reasoning
    out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = list(delta.tool_calls)
    return out
