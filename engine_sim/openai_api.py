"""OpenAI request parsing and response shapes, as vLLM's and SGLang's servers produce them (pure).

The simulator reads only what it models; other fields are accepted and ignored, like a
real server that does not support a sampling option would ignore it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine_sim.tokenizer import render_chat, tokenize

DEFAULT_MAX_TOKENS = 16

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    408: "TimeoutError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class RequestError(Exception):
    """A request the server refuses: becomes an OpenAI error body with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError"),
            "param": param,
            "code": status,
        }
    }


@dataclass
class ParsedRequest:
    chat: bool
    model: str | None
    prompt_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    kv_transfer_params: dict[str, Any] | None
    bootstrap_host: str | None
    bootstrap_port: int | None
    bootstrap_room: int | None
    has_bootstrap_room: bool


def parse_request(body: Any, chat: bool) -> ParsedRequest:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "'model' must be a string", "model")
    prompt_ids = _chat_prompt(body) if chat else _completion_prompt(body)
    max_tokens = _max_tokens(body, chat)
    n = body.get("n", 1)
    if n not in (None, 1):
        raise RequestError(400, "the simulator serves n=1 only; send one request per choice", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object", "stream_options")
    kv = body.get("kv_transfer_params")
    if kv is not None and not isinstance(kv, dict):
        raise RequestError(400, "'kv_transfer_params' must be an object", "kv_transfer_params")
    room = body.get("bootstrap_room")
    if isinstance(room, list):
        if len(room) != 1:
            raise RequestError(400, "the simulator serves one prompt per request; send one bootstrap_room", "bootstrap_room")
        room = room[0]
    if room is not None and (not isinstance(room, int) or isinstance(room, bool) or not 0 <= room < 2**63):
        raise RequestError(400, "'bootstrap_room' must be an integer in [0, 2**63)", "bootstrap_room")
    port = body.get("bootstrap_port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
        raise RequestError(400, "'bootstrap_port' must be an integer or null", "bootstrap_port")
    host = body.get("bootstrap_host")
    if host is not None and not isinstance(host, str):
        raise RequestError(400, "'bootstrap_host' must be a string or null", "bootstrap_host")
    return ParsedRequest(
        chat=chat,
        model=model,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        kv_transfer_params=kv,
        bootstrap_host=host,
        bootstrap_port=port,
        bootstrap_room=room,
        has_bootstrap_room="bootstrap_room" in body and room is not None,
    )


def _completion_prompt(body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tokenize(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)  # token ids
    raise RequestError(400, "'prompt' must be a string, a list of token ids, or a list holding one of those", "prompt")


def _chat_prompt(body: dict[str, Any]) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    try:
        return tokenize(render_chat(messages))
    except ValueError as exc:
        raise RequestError(400, str(exc), "messages") from None


def _max_tokens(body: dict[str, Any], chat: bool) -> int:
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RequestError(400, f"'{name}' must be an integer >= 1", name)
        return value
    return DEFAULT_MAX_TOKENS


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass
class ResponseShape:
    """Builds the JSON answer and the SSE chunks of one request."""

    request_id: str
    model: str
    chat: bool
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    def full(self, text: str, finish_reason: str, usage_: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
            obj = "text_completion"
        return {
            "id": self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_,
            **extra,
        }

    def chunk(self, text: str, finish_reason: str | None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta = {"role": "assistant", "content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
            obj = "text_completion"
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self, usage_: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {
            "id": self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_,
        }
