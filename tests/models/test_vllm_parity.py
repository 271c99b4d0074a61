"""Acceptance on real vLLM CPU: our implementation equals vLLM's built-in, token for token.

For each tiny random-weight model (Llama, Qwen3 with tied embeddings, Qwen3-MoE) the
built-in implementation and ours (selected with `--hf-overrides`) serve the same batch
of greedy completions; generated token ids must be identical and every prompt and
sampled-token logprob must agree to 1e-4 (float32). Per model the reference (for Llama
the session's shared engine) and ours start together: at most two engines start at once
(the shared one idles beside them, for the modules run with this one).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from testbed.models import build_tiny_model
from testbed.processes import ManagedProcess
from testbed.vllm_engine import DEFAULT_READY_TIMEOUT, start_vllm
from tests.support.shared_engine import SharedEngine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPTS = [
    "The router sends the prefill request to one worker and",
    "Hello world, this is",
]
MAX_TOKENS = 12
TOLERANCE = 1e-4


def _complete(proc: ManagedProcess, model_dir: Path) -> list[dict]:
    """One batched greedy request; per prompt: generated ids, their logprobs, prompt logprobs."""
    body = {
        "model": str(model_dir),
        "prompt": PROMPTS,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logprobs": 0,
        "prompt_logprobs": 0,
        "return_token_ids": True,
    }
    req = urllib.request.Request(
        proc.url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        choices = sorted(json.loads(resp.read())["choices"], key=lambda c: c["index"])
    results = []
    for choice in choices:
        prompt_ids = choice["prompt_token_ids"]
        # prompt_logprobs[i] maps token id -> info and always includes the prompt's own token.
        pairs = zip(prompt_ids[1:], choice["prompt_logprobs"][1:], strict=True)
        prompt_lps = [entry[str(tok)]["logprob"] for tok, entry in pairs]
        results.append(
            {
                "prompt_ids": prompt_ids,
                "ids": choice["token_ids"],
                "logprobs": choice["logprobs"]["token_logprobs"],
                "prompt_logprobs": prompt_lps,
            }
        )
    return results


def _assert_same(ours: list[dict], builtin: list[dict]) -> None:
    for prompt, got, want in zip(PROMPTS, ours, builtin, strict=True):
        assert got["prompt_ids"] == want["prompt_ids"], prompt
        assert len(want["ids"]) == MAX_TOKENS
        assert got["ids"] == want["ids"], f"greedy tokens differ for {prompt!r}"
        for kind in ("prompt_logprobs", "logprobs"):
            worst = max(abs(a - b) for a, b in zip(got[kind], want[kind], strict=True))
            assert worst <= TOLERANCE, f"{kind} differ by {worst:.2e} for {prompt!r}"


@pytest.mark.parametrize(
    ("kind", "atom_arch"),
    [("llama", "AtomLlamaForCausalLM"), ("qwen3", "AtomQwen3ForCausalLM"), ("qwen3_moe", "AtomQwen3MoeForCausalLM")],
)
def test_atom_matches_builtin(kind: str, atom_arch: str, vllm_colocated: SharedEngine) -> None:
    model_dir = build_tiny_model(kind)
    overrides = json.dumps({"architectures": [atom_arch]})
    # Our engine starts first and without waiting: its start-up overlaps the reference's
    # (the two are mostly single-threaded imports and loads, one per core).
    with start_vllm(model_dir, extra_args=["--hf-overrides", overrides], wait=False, name=f"vllm-atom-{kind}") as proc:
        if kind == "llama":  # the session's shared built-in Llama engine is the reference
            builtin = _complete(vllm_colocated.process, model_dir)
        else:
            with start_vllm(model_dir, name=f"vllm-builtin-{kind}") as reference:
                builtin = _complete(reference, model_dir)
        proc.wait_http_ready("/health", timeout=DEFAULT_READY_TIMEOUT)
        ours = _complete(proc, model_dir)
        assert f"Resolved architecture: {atom_arch}" in proc.log_text(), "vLLM did not pick our class"
    _assert_same(ours, builtin)
