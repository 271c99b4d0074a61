"""Greedy requests through the OpenAI SDK and their comparison, for the real-engine tests.

A P/D pair is right when it returns the same greedy token ids (and, within float
tolerance, the same logprobs) as one co-located engine, for prompts from shorter than a
KV block to longer than two blocks (block size 128 on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

from testbed.models import _CORPUS

MAX_TOKENS = 12
ROUTES = ("chat", "completions")


@dataclass(frozen=True)
class Case:
    route: str
    stream: bool
    prompt: str  # key into the prompts dict

    def __str__(self) -> str:
        return f"{self.route}-{'stream' if self.stream else 'json'}-{self.prompt}"


CASES = [Case(r, s, p) for r in ROUTES for s in (False, True) for p in ("short", "medium", "long")]


@dataclass(frozen=True)
class Answer:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str


def build_prompts(model_dir: Path) -> dict[str, str]:
    """Prompts of about 10, 80 and 300+ tokens (the long one spans more than two blocks)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    corpus = list(_CORPUS)

    def grow(target: int) -> str:
        parts: list[str] = []
        i = 0
        while len(tok.encode(" ".join(parts)).ids) < target:
            parts.append(corpus[i % len(corpus)])
            i += 1
        return " ".join(parts)

    prompts = {"short": "Hello world, this is", "medium": grow(80), "long": grow(300)}
    assert len(tok.encode(prompts["long"]).ids) < 1024 - MAX_TOKENS - 32
    return prompts


def ask(client: OpenAI, model: str, case: Case, prompts: dict[str, str]) -> Answer:
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": case.stream,
        "extra_body": {"return_token_ids": True, "ignore_eos": True},
    }
    if case.route == "chat":
        resp = client.chat.completions.create(
            messages=[{"role": "user", "content": prompts[case.prompt]}], logprobs=True, top_logprobs=1, **common
        )
    else:
        resp = client.completions.create(prompt=prompts[case.prompt], logprobs=1, **common)
    choices = [c for chunk in resp for c in chunk.choices] if case.stream else resp.choices
    ids: list[int] = []
    lps: list[float] = []
    text = ""
    for c in choices:
        extra = c.model_extra or {}
        ids += extra.get("token_ids") or []
        if case.route == "chat":
            text += (c.delta.content if case.stream else c.message.content) or ""
            lps += [x.logprob for x in (c.logprobs.content or [])] if c.logprobs else []
        else:
            text += c.text or ""
            lps += list(c.logprobs.token_logprobs or []) if c.logprobs else []
    return Answer(tuple(ids), tuple(lps), text)


def assert_same(got: Answer, want: Answer) -> None:
    assert len(want.token_ids) == MAX_TOKENS, "reference did not generate the full length"
    assert got.token_ids == want.token_ids
    assert got.text == want.text
    assert len(got.logprobs) == len(want.logprobs) == MAX_TOKENS
    for g, w in zip(got.logprobs, want.logprobs, strict=True):
        assert math.isclose(g, w, rel_tol=1e-3, abs_tol=1e-3), (got.logprobs, want.logprobs)


# Chats whose rendered prompt the router must tokenize as the engine does (vLLM's
# /tokenize is the reference): each is a chat completions body without "model".
TEMPLATE_CHATS: dict[str, dict[str, Any]] = {
    "one-user-turn": {"messages": [{"role": "user", "content": "Hello there"}]},
    "system-and-turns": {
        "messages": [
            {"role": "system", "content": "You route requests."},
            {"role": "user", "content": "Where does prefill run?"},
            {"role": "assistant", "content": "On the prefill worker."},
            {"role": "user", "content": "And decode?"},
        ]
    },
    "content-parts": {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]}]
    },
    "multi-byte": {"messages": [{"role": "user", "content": "café, 東京, 🚀 and naïve résumé"}]},
    "developer-role": {
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    },
    "no-generation-prompt": {
        "messages": [{"role": "user", "content": "Hi"}],
        "add_generation_prompt": False,
    },
    "continue-final-message": {
        "messages": [{"role": "user", "content": "Count:"}, {"role": "assistant", "content": "one, two,"}],
        "add_generation_prompt": False,
        "continue_final_message": True,
    },
}


def engine_chat_tokens(url: str, model: str) -> dict[str, list[int]]:
    """Each TEMPLATE_CHATS prompt's token ids as the engine renders them (vLLM /tokenize)."""
    import httpx

    tokens = {}
    for name, chat in TEMPLATE_CHATS.items():
        resp = httpx.post(f"{url}/tokenize", json={"model": model, **chat}, timeout=60)
        assert resp.status_code == 200, f"{name}: {resp.text}"
        tokens[name] = resp.json()["tokens"]
    return tokens
