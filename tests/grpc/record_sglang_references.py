"""Record the references `test_sglang_grpc_engine.py` compares with: greedy answers of
SGLang's own HTTP server for the tiny model, with token ids and logprobs.

Run once (it starts an SGLang CPU server, so under the shared heavy lock):

    flock /tmp/atom-heavy.lock timeout 900 python -m tests.grpc.record_sglang_references

It writes `tests/grpc/data/sglang_references.json`: per case the route, the request body
(the model path replaced by `MODEL`) and SGLang's status and answer, plus the model's
build name (`llama-<content hash>`), so a test against another build of the tiny model
fails and says to record again instead of comparing with answers of other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from testbed.models import build_tiny_model
from testbed.sglang_engine import start_sglang

MODEL = "MODEL"
OUT = Path(__file__).parent / "data" / "sglang_references.json"
MAX_TOKENS = 12
PROMPTS = {
    "short": list(range(5, 40)),
    "other": [7, 300, 12, 99, 450, 3, 8, 200, 17],
}
# Longer than the model's context (max_position_embeddings 2048).
TOO_LONG = [5] * 2100
CHAT = [{"role": "user", "content": "Tell me about the weather"}]


def cases(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The requests, by name: route and body (as the router gets them too)."""
    greedy = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0}
    out: dict[str, tuple[str, dict[str, Any]]] = {
        name: ("/v1/completions", {**greedy, "prompt": ids, "logprobs": 2, "ignore_eos": True}) for name, ids in PROMPTS.items()
    }
    out["chat"] = ("/v1/chat/completions", {**greedy, "messages": CHAT, "logprobs": True, "top_logprobs": 2})
    out["text"] = ("/v1/completions", {**greedy, "prompt": "The quick brown fox", "logprobs": 1})
    out["too_long"] = ("/v1/completions", {"model": model, "prompt": TOO_LONG, "max_tokens": 4})
    return out


def main() -> None:
    model_dir = build_tiny_model("llama")
    engine = start_sglang(model_dir, name="sglang-references")
    recorded: dict[str, Any] = {"model_build": model_dir.name, "cases": {}}
    try:
        with httpx.Client(base_url=engine.url, timeout=120) as client:
            for name, (route, body) in cases(str(model_dir)).items():
                resp = client.post(route, json={**body, "return_token_ids": True})
                recorded["cases"][name] = {"route": route, "body": body, "status": resp.status_code, "answer": resp.json()}
    finally:
        engine.stop()
    text = json.dumps(recorded, ensure_ascii=False, indent=1).replace(json.dumps(str(model_dir))[1:-1], MODEL)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
