"""Greedy OpenAI completions against any server, reduced to what P/D must preserve.

A result is the generated token ids, their logprobs and the text, for stream and
non-stream alike, so a P/D answer can be compared with a co-located one exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from tests.support.pd_client import greedy_body

MAX_TOKENS = 12

# Logprobs against answers recorded on another machine: SGLang's CPU kernels differ by the
# CPU's instruction set (two machines of this workplace differed by up to 5e-3 on the tiny
# model, token ids and text equal). A logprob of the wrong token or position is off by far more.
RECORDED_LOGPROB_TOLERANCE = 2e-2


@dataclass(frozen=True)
class Generation:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str


def _choice_parts(choice: dict) -> tuple[list[int], list[float], str]:
    return list(choice.get("token_ids") or []), list(choice["logprobs"]["token_logprobs"]), choice["text"]


def complete(base_url: str, model: str, prompt: str, *, stream: bool = False, timeout: float = 300) -> Generation:
    """POST /v1/completions (temperature 0, logprobs, token ids); raises on a non-200 answer."""
    body = greedy_body(model, prompt, MAX_TOKENS, stream=stream)
    ids: list[int] = []
    logprobs: list[float] = []
    text = ""
    with httpx.Client(timeout=timeout) as client:
        if not stream:
            resp = client.post(f"{base_url}/v1/completions", json=body)
            assert resp.status_code == 200, resp.text
            ids, logprobs, text = _choice_parts(resp.json()["choices"][0])
        else:
            with client.stream("POST", f"{base_url}/v1/completions", json=body) as resp:
                assert resp.status_code == 200, resp.read().decode()
                done = False
                for line in resp.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    choices = json.loads(line[len("data: ") :])["choices"]
                    if choices:
                        i, lp, t = _choice_parts(choices[0])
                        ids += i
                        logprobs += lp
                        text += t
                assert done, "stream ended without [DONE]"
    assert len(logprobs) == MAX_TOKENS, f"expected {MAX_TOKENS} tokens, got {len(logprobs)}"
    return Generation(tuple(ids), tuple(logprobs), text)


def assert_same_generation(got: Generation, want: Generation, what: str) -> None:
    """`got` is the recorded answer `want` (ids and text exactly, logprobs within the
    tolerance for recordings)."""
    assert got.token_ids == want.token_ids, f"{what}: token ids differ"
    assert got.logprobs == pytest.approx(want.logprobs, abs=RECORDED_LOGPROB_TOLERANCE), f"{what}: logprobs differ"
    assert got.text == want.text, f"{what}: text differs"
