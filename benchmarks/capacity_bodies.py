"""The bytes the capacity benchmark's backends answer and its clients send (one place for each).

Chat completions, as an OpenAI-compatible engine would send them: a non-streamed answer, a
streamed answer of token events, and a P/D prefill leg's answer with `kv_transfer_params`.
"""

from __future__ import annotations

import json

MODEL = "sim-model"
SSE_EVENTS = 64  # token events per streamed answer in the `sse` mode

FIXED_CHAT_BODY = json.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " fixed answer"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    },
    separators=(",", ":"),
).encode()

# GET /v1/models: smg routes a request's `model` by it, and picks its P/D protocol by `owned_by`:
# "vllm" makes it run the sequential two-leg protocol, as our router and vllm-router do here.
MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm"}]},
    separators=(",", ":"),
).encode()

# What a vLLM prefill worker answers to the one-token prefill leg: the decode leg carries these on.
PREFILL_BODY = json.dumps(
    {
        "id": "chatcmpl-prefill",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " x"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
        "kv_transfer_params": {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": [0],
            "remote_engine_id": "bench-prefill",
            "remote_host": "127.0.0.1",
            "remote_port": 1,
            "tp_size": 1,
        },
    },
    separators=(",", ":"),
).encode()


def sse_event_bodies(events: int) -> list[bytes]:
    """`events` chat.completion.chunk events of one token each, without the closing [DONE]. All
    but the last (which carries finish_reason) are the same bytes: nginx builds the answer
    from two variables, as its config strings are limited to 4 KiB."""
    return [_token_event(None)] * (events - 1) + [_token_event("length")]


def _token_event(finish_reason: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def chat_request(stream: bool) -> bytes:
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 64, "stream": stream},
        separators=(",", ":"),
    ).encode()
