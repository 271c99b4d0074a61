"""Record the answers of SGLang's built-in Qwen3 that `test_sglang_parity.py` compares ours
with, so that module starts only our servers (the built-in reference server cost one
SGLang start-up of the suite).

    flock /tmp/atom-heavy.lock timeout 900 .venv/bin/python -m tests.models.record_sglang_parity

It writes `tests/models/data/sglang_builtin_parity.json`: the SGLang version and the tiny
Qwen3's build (its cache directory name, a content hash) it came from, the prompts, and
the built-in's greedy answers (token ids, input and output logprobs). The test refuses a
file recorded for another SGLang version, model build or prompts: re-record then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from testbed.models import build_tiny_model
from testbed.processes import ManagedProcess
from testbed.sglang_engine import sglang_version, start_sglang

OUT = Path(__file__).parent / "data" / "sglang_builtin_parity.json"
PROMPTS = [
    "The router sends the prefill request to one worker and",
    "Hello world, this is",
]
MAX_TOKENS = 12
# SGLang's "auto" dtype serves a float32 checkpoint in float16; compare in float32.
DTYPE = ["--dtype", "float32"]


def generate(proc: ManagedProcess) -> list[dict[str, Any]]:
    """Batched greedy /generate with input and output logprobs from the first token."""
    body = {
        "text": PROMPTS,
        "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS, "ignore_eos": True},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    resp = httpx.post(f"{proc.url}/generate", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    results = []
    for item in resp.json():
        meta = item["meta_info"]
        results.append(
            {
                "output_ids": item["output_ids"],
                "input_ids": [tok for _, tok, _ in meta["input_token_logprobs"]],
                # The first prompt token has no logprob (None): nothing precedes it.
                "input_logprobs": [lp for lp, _, _ in meta["input_token_logprobs"][1:]],
                "output_logprobs": [lp for lp, _, _ in meta["output_token_logprobs"]],
            }
        )
    return results


def main() -> None:
    model_dir = build_tiny_model("qwen3")
    with start_sglang(model_dir, extra_args=DTYPE, name="sglang-builtin-qwen3") as reference:
        answers = generate(reference)
    recorded = {"sglang": sglang_version(), "model": model_dir.name, "prompts": PROMPTS, "answers": answers}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
