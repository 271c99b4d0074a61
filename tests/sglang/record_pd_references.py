"""Record the co-located SGLang answers that `test_pd_engines.py` compares its P/D pair
with, so that module starts only the pair (the co-located reference server, started and
stopped before the pair, cost one SGLang start-up of the suite).

    flock /tmp/atom-heavy.lock timeout 900 .venv/bin/python -m tests.sglang.record_pd_references

It writes `tests/sglang/data/pd_references.json`: the SGLang version and the tiny model's
build (its cache directory name, a content hash) it came from, and per prompt and stream
mode the prompt and the greedy answer (token ids, logprobs, text). The test refuses a file
recorded for another SGLang version, model build or prompt: re-record then.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from testbed.models import build_tiny_model
from testbed.sglang_engine import sglang_version, start_sglang
from tests.support.completions import complete

OUT = Path(__file__).parent / "data" / "pd_references.json"

_SENTENCES = (
    "The router sends the prefill request to one worker and the decode request to another. "
    "Prefill computes the key value cache for the whole prompt in one forward pass. "
    "Decode reads the transferred cache and generates one token at a time. "
)
PROMPTS = {
    "short": "Hello world",
    "medium": "Mooncake moves pages of memory between processes over TCP or RDMA.",
    "long": _SENTENCES * 4,
    "very_long": _SENTENCES * 16,
}


def main() -> None:
    model_dir = build_tiny_model("llama")
    with start_sglang(model_dir, name="sglang-colocated") as colocated:
        answers = [
            {"name": name, "prompt": prompt, "stream": s, **asdict(complete(colocated.url, str(model_dir), prompt, stream=s))}
            for name, prompt in PROMPTS.items()
            for s in (False, True)
        ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"sglang": sglang_version(), "model": model_dir.name, "answers": answers}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
