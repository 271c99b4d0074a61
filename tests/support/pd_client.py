"""HTTP helpers for the P/D engine tests: completions (JSON or SSE) and the two serial legs.

The serial legs are what `atom-router --backend vllm` does; tests that must alter the
decode leg's kv_transfer_params (another fingerprint, a stale engine id) or talk to a
producer the router does not know drive the legs themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=300)


def greedy_body(model: str, prompt: str | list[int], max_tokens: int, *, stream: bool = False) -> dict[str, Any]:
    """A completion request the P/D tests compare engines with: greedy, with each token's id
    and logprob (`return_token_ids` is vLLM's and SGLang's), so equal answers mean equal KV."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": 1,
        "return_token_ids": True,
        "stream": stream,
    }


@dataclass
class Completion:
    status: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    error: Any = None
    kv_transfer_params: dict | None = None


async def complete(session: aiohttp.ClientSession, base_url: str, body: dict) -> Completion:
    """POST /v1/completions; for stream=true, gather token ids and logprobs from the SSE chunks."""
    async with session.post(f"{base_url}/v1/completions", json=body, timeout=TIMEOUT) as resp:
        if resp.status != 200:
            return Completion(resp.status, error=await resp.text())
        if not body.get("stream"):
            data = await resp.json()
            choice = data["choices"][0]
            lp = (choice.get("logprobs") or {}).get("token_logprobs") or []
            return Completion(200, choice.get("token_ids") or [], lp, kv_transfer_params=data.get("kv_transfer_params"))
        out = Completion(200)
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                out.error = chunk["error"]
                continue
            for choice in chunk.get("choices", []):
                out.token_ids += choice.get("token_ids") or []
                out.logprobs += (choice.get("logprobs") or {}).get("token_logprobs") or []
        return out


async def pd_legs(
    session: aiohttp.ClientSession, prefill_url: str, decode_url: str, body: dict, *, extra_params: dict | None = None
) -> Completion:
    """Prefill leg (1 token, no stream, do_remote_decode), then decode with the returned params."""
    first = {**body, "max_tokens": 1, "stream": False, "kv_transfer_params": {"do_remote_decode": True}}
    first.pop("stream_options", None)
    pre = await complete(session, prefill_url, first)
    if pre.status != 200 or pre.kv_transfer_params is None:
        raise AssertionError(f"prefill leg failed: {pre}")
    return await complete(session, decode_url, {**body, "kv_transfer_params": {**pre.kv_transfer_params, **(extra_params or {})}})
