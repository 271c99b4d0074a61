"""The gRPC leg's codec for a router without a tokenizer: `/v1/completions` by token ids.

With the model's tokenizer (`--tokenizer-path`, `--model-path`, or fetched from the
worker) `OpenAICodec` serves gRPC workers (`router.generation`: chats, text prompts,
detokenized answers) and hands requests for models it has none for to this codec, which
can still run completions whose prompt is token ids, answering as vLLM does with
`return_token_ids` and `return_tokens_as_token_ids`: `token_ids` per choice, `text` empty,
logprob tokens as "token_id:N". One prompt, n=1; anything else is a 400 that says what
to send instead, never a silently different answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import orjson

from router.errors import ApiError
from router.generation.sampling import COMPLETIONS_DEFAULT_MAX_TOKENS
from router.generation.types import GenerationChunk, GenerationRequest, SamplingParams, TokenLogprob
from router.prepare import COMPLETIONS_ROUTE, PreparedRequest
from router.workers.worker import Worker

_FLOATS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
_INTS = ("top_k", "min_tokens", "seed")
_BOOLS = ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens")


def _unsupported(message: str, param: str | None = None) -> ApiError:
    return ApiError(
        400, f"{message} (gRPC workers, when the router has no tokenizer for the model: start it with --model-path)", param=param
    )


def sampling_from_body(body: dict[str, Any]) -> SamplingParams:
    """The completions API's sampling fields; a wrong type is a 400 naming the field."""
    values: dict[str, Any] = {}
    for name in _FLOATS:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ApiError(400, f"{name} must be a number", param=name)
            values[name] = float(value)
    for name in _INTS:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(400, f"{name} must be an integer", param=name)
            values[name] = value
    for name in _BOOLS:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, bool):
                raise ApiError(400, f"{name} must be a boolean", param=name)
            values[name] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        values["stop"] = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        values["stop"] = tuple(stop)
    elif stop is not None:
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None:
        if not isinstance(stop_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in stop_ids):
            raise ApiError(400, "stop_token_ids must be a list of integers", param="stop_token_ids")
        values["stop_token_ids"] = tuple(stop_ids)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0:
            raise ApiError(400, "logprobs must be a non-negative integer (top alternatives per token)", param="logprobs")
        values["logprobs"] = logprobs
    max_tokens = body.get("max_tokens")
    values["max_tokens"] = COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    return SamplingParams(**values)


class CompletionsCodec:
    """`GenerationCodec` for `/v1/completions` by token ids."""

    async def request(self, prepared: PreparedRequest, worker: Worker) -> GenerationRequest:
        if prepared.route != COMPLETIONS_ROUTE:
            raise ApiError(
                501,
                "chat completions over gRPC workers need the router's tokenizer: start it with --tokenizer-path",
                code="not_implemented",
            )
        body = prepared.body
        if prepared.batch_size != 1:
            raise _unsupported("send one prompt per request", "prompt")
        if body.get("n") not in (None, 1):
            raise _unsupported("n must be 1", "n")
        if body.get("echo") or body.get("suffix") is not None or body.get("best_of") not in (None, 1):
            raise _unsupported("echo, suffix and best_of are not supported", "echo")
        ids = prepared.descriptor.routing_tokens
        if ids is None:
            raise ApiError(
                400,
                "a text prompt needs the router's tokenizer (--tokenizer-path) for gRPC workers; or send token ids",
                param="prompt",
            )
        prompt = body["prompt"]
        return GenerationRequest(
            request_id=prepared.descriptor.request_id,
            input_ids=tuple(ids),
            sampling=sampling_from_body(body),
            stream=prepared.descriptor.stream,
            text=prompt if isinstance(prompt, str) else "",
        )

    # -- rendering -----------------------------------------------------------------------

    @staticmethod
    def _token(token_id: int) -> str:
        return f"token_id:{token_id}"

    def _logprobs(self, entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        return {
            "tokens": [self._token(e.token_id) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{self._token(t): lp for t, lp in e.top} for e in entries],
            "token_ids": [e.token_id for e in entries],
            "top_logprobs_token_ids": [[t for t, _ in e.top] for e in entries],
        }

    def _envelope(self, prepared: PreparedRequest, worker: Worker, choice: dict[str, Any]) -> dict[str, Any]:
        model = prepared.descriptor.model or (min(worker.models) if worker.models else "")
        return {
            "id": f"cmpl-{prepared.descriptor.request_id}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }

    @staticmethod
    def _usage(chunk: GenerationChunk) -> dict[str, Any]:
        return {
            "prompt_tokens": chunk.prompt_tokens,
            "completion_tokens": chunk.completion_tokens,
            "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": chunk.cached_tokens},
        }

    def render_body(
        self, prepared: PreparedRequest, worker: Worker, request: GenerationRequest, chunk: GenerationChunk
    ) -> bytes:
        choice = {
            "index": 0,
            "text": "",
            "token_ids": list(chunk.token_ids),
            "logprobs": self._logprobs(chunk.logprobs),
            "finish_reason": chunk.finish_reason,
            "stop_reason": chunk.matched_stop,
        }
        out = self._envelope(prepared, worker, choice)
        out["usage"] = self._usage(chunk)
        return orjson.dumps(out)

    async def render_stream(
        self,
        prepared: PreparedRequest,
        worker: Worker,
        request: GenerationRequest,
        chunks: AsyncIterator[GenerationChunk],
    ) -> AsyncGenerator[bytes, None]:
        options = prepared.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        last: GenerationChunk | None = None
        async for chunk in chunks:
            last = chunk
            if not chunk.token_ids and not chunk.finished:
                continue
            choice = {
                "index": 0,
                "text": "",
                "token_ids": list(chunk.token_ids),
                "logprobs": self._logprobs(chunk.logprobs) if chunk.token_ids else None,
                "finish_reason": chunk.finish_reason,
                "stop_reason": chunk.matched_stop,
            }
            yield b"data: " + orjson.dumps(self._envelope(prepared, worker, choice)) + b"\n\n"
        if include_usage and last is not None:
            usage = self._envelope(prepared, worker, {})
            usage["choices"] = []
            usage["usage"] = self._usage(last)
            yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"
