"""Record the answers of vLLM's built-in Qwen3 and Qwen3-MoE implementations that
`test_vllm_parity.py` compares ours with, so that module starts only our engines (the two
built-in reference engines took about two vLLM start-ups of the suite; the Llama reference
is the session's shared engine, asked live).

    flock /tmp/atom-heavy.lock timeout 900 .venv/bin/python -m tests.models.record_vllm_parity

It writes `tests/models/data/vllm_builtin_parity.json`: the vLLM version, and per model
kind the tiny model's build (its cache directory name, a content hash) and the built-in's
answers to `PROMPTS` (prompt ids, generated ids, their logprobs, prompt logprobs). The
test refuses a file recorded for another model build or vLLM version: re-record then.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from testbed.models import build_tiny_model
from testbed.processes import ManagedProcess
from testbed.vllm_engine import start_vllm, vllm_version

OUT = Path(__file__).parent / "data" / "vllm_builtin_parity.json"
RECORDED_KINDS = ("qwen3", "qwen3_moe")
PROMPTS = [
    "The router sends the prefill request to one worker and",
    "Hello world, this is",
]
MAX_TOKENS = 12


def complete_batch(proc: ManagedProcess, model_dir: Path) -> list[dict[str, Any]]:
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


def main() -> None:
    recorded: dict[str, Any] = {}
    for kind in RECORDED_KINDS:  # one at a time: a reference engine is a plain start, no overrides
        model_dir = build_tiny_model(kind)
        with start_vllm(model_dir, name=f"vllm-builtin-{kind}") as engine:
            recorded[kind] = {"model": model_dir.name, "answers": complete_batch(engine, model_dir)}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"vllm": vllm_version(), "kinds": recorded}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
