"""Record the answers of vLLM's own HTTP server that `test_engine_grpc.py` compares the
gRPC path with, so that module starts only the gRPC engine (the HTTP reference engine
took ~130 s of the suite).

    flock /tmp/atom-heavy.lock timeout 900 python -m tests.grpc.record_vllm_http

It writes `tests/grpc/data/vllm_http_references.json`: the vLLM version and the tiny
model's build (its cache directory name, a content hash) it came from, and per case the
request and vLLM's status and answer (the JSON, or every SSE event of a stream). The
test refuses a file recorded for another model build or vLLM version: re-record then.

The model is the tiny Llama with two additions (`reference_model`): sampling defaults in
its generation_config.json (vLLM's HTTP server applies them, its gRPC servicer does not:
the router must) and a chat template that refuses a chat starting with the assistant
(a template error the router must answer as vLLM does).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from testbed.models import build_tiny_model
from testbed.vllm_engine import start_vllm, vllm_version

OUT = Path(__file__).parent / "data" / "vllm_http_references.json"
MODEL = "MODEL"  # the model path's placeholder in the file

# What the reference model's generation_config.json adds: none of these changes a greedy
# answer or its (raw) logprobs, so the token-id cases stay comparable without them.
GENERATION_DEFAULTS = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "max_new_tokens": 10}
ROLE_CHECK = (
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('Conversation roles must start with user or system') }}{% endif %}"
)

PROMPTS = {
    "short": list(range(5, 40)),
    "other": [7, 300, 12, 99, 450, 3, 8, 200, 17],
}
MAX_TOKENS = 12
TOO_LONG = [5] * 1100  # the engines run with --max-model-len 1024
MESSAGES = [{"role": "user", "content": "Tell me about the weather"}]
CHAT = {"messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
TEXT = {"prompt": "The quick brown fox", "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 1}
SEED = 1234


def greedy(prompt: list[int], **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 2, "ignore_eos": True, **extra}


def cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (route, body without `model`)."""
    chat, comp = "/v1/chat/completions", "/v1/completions"
    out: dict[str, tuple[str, dict[str, Any]]] = {
        name: (comp, {**greedy(prompt), "return_token_ids": True}) for name, prompt in PROMPTS.items()
    }
    out["chat"] = (chat, {**CHAT, "return_token_ids": True})
    out["text"] = (comp, {**TEXT, "return_token_ids": True})
    out["too_long"] = (comp, {"prompt": TOO_LONG, "max_tokens": 4})
    # No sampling field and no max_tokens: the model's generation_config decides (seeded).
    out["defaults_chat"] = (chat, {"messages": MESSAGES, "seed": SEED, "return_token_ids": True})
    out["defaults_text"] = (comp, {"prompt": "The quick brown fox", "seed": SEED, "return_token_ids": True})
    out["template_rejected"] = (
        chat,
        {"messages": [{"role": "assistant", "content": "Hello"}, *MESSAGES], "max_tokens": 4, "temperature": 0},
    )
    out["chat_stream_logprobs"] = (
        chat,
        {**CHAT, "stream": True, "logprobs": True, "top_logprobs": 2, "stop": ["\n"], "return_token_ids": True},
    )
    return out


def reference_model(tiny: Path) -> Path:
    """The tiny model plus GENERATION_DEFAULTS and ROLE_CHECK, built once beside it."""
    target = tiny.parent / f"{tiny.name}-grpc-reference"
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=tiny.parent))
    try:
        for item in tiny.iterdir():
            shutil.copy2(item, tmp / item.name)
        config = json.loads((tiny / "generation_config.json").read_text())
        (tmp / "generation_config.json").write_text(json.dumps({**config, **GENERATION_DEFAULTS}, indent=2) + "\n")
        template = (tiny / "chat_template.jinja").read_text()
        (tmp / "chat_template.jinja").write_text(ROLE_CHECK + template)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _post(client: httpx.Client, route: str, body: dict[str, Any]) -> dict[str, Any]:
    if not body.get("stream"):
        r = client.post(route, json=body)
        return {"status": r.status_code, "answer": r.json()}
    events: list[Any] = []
    with client.stream("POST", route, json=body) as r:
        status = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return {"status": status, "answer": events}


def main() -> None:
    tiny = build_tiny_model("llama")
    model_dir = reference_model(tiny)
    engine = start_vllm(model_dir, name="vllm-grpc-references")
    try:
        recorded: dict[str, Any] = {}
        with httpx.Client(base_url=engine.url, timeout=120) as client:
            for name, (route, body) in cases().items():
                recorded[name] = {"route": route, "body": body, **_post(client, route, {"model": str(model_dir), **body})}
    finally:
        engine.stop()
    out = {"vllm": vllm_version(), "model": tiny.name, "cases": recorded}
    text = json.dumps(out, ensure_ascii=False, indent=1).replace(json.dumps(str(model_dir))[1:-1], MODEL)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
