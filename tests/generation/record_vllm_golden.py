"""Record the golden answers `test_golden.py` replays: greedy answers of vLLM's own HTTP
server for the tiny model, with the token ids and logprobs of every output token.

Run once (it starts a vLLM CPU engine, so under the shared heavy lock):

    flock /tmp/atom-heavy.lock timeout 900 python -m tests.generation.record_vllm_golden

It writes `tests/generation/data/vllm_golden.json`: per case the request body, the
prompt and output token ids, and vLLM's answer (the JSON, or every SSE event of a
stream), twice when it has logprobs: as shown, and with tokens as ids. The model
path is replaced by `MODEL` so the file names no machine's paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from testbed.models import build_tiny_model
from testbed.vllm_engine import start_vllm

MODEL = "tiny-llama"
OUT = Path(__file__).parent / "data" / "vllm_golden.json"
CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Say hello in Chinese: 你好 😀, then count to five."},
]
PROMPT = "Once upon a time in 東京 there was a café 🍵 where"


def _bodies(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    chat = {"model": model, "messages": CHAT, "temperature": 0, "max_tokens": 24, "logprobs": True, "top_logprobs": 2}
    comp = {"model": model, "prompt": PROMPT, "temperature": 0, "max_tokens": 24, "logprobs": 2}
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    return {
        "chat": ("/v1/chat/completions", chat),
        "chat_stream": ("/v1/chat/completions", {**chat, **stream}),
        "completion": ("/v1/completions", comp),
        "completion_stream": ("/v1/completions", {**comp, **stream}),
        "completion_no_logprobs": ("/v1/completions", {k: v for k, v in comp.items() if k != "logprobs"}),
    }


def _record(client: httpx.Client, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's answer, and the same answer with every logprob token as `token_id:N`
    (the ids of the top alternatives are what the replayed engine chunks carry)."""
    case = {"route": route, "body": body, "answer": _post(client, route, body)}
    if body.get("logprobs") is not None and body.get("logprobs") is not False:
        case["answer_as_ids"] = _post(client, route, {**body, "return_tokens_as_token_ids": True})
    return case


def _post(client: httpx.Client, route: str, body: dict[str, Any]) -> Any:
    body = {**body, "return_token_ids": True}
    if not body.get("stream"):
        r = client.post(route, json=body)
        r.raise_for_status()
        return r.json()
    events = []
    with client.stream("POST", route, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _text(answer: Any) -> str:
    choice = answer["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def _stop_for(text: str) -> str:
    """A stop string from the middle of a recorded answer: 3 characters, none a space."""
    for start in range(len(text) // 3, len(text) - 3):
        s = text[start : start + 3]
        if s.strip() == s and "\ufffd" not in s and text.find(s) == start:
            return s
    raise RuntimeError(f"no stop string candidate in {text!r}")


def main() -> None:
    model_dir = build_tiny_model("llama")
    engine = start_vllm(model_dir, name="vllm-golden")
    try:
        cases: dict[str, Any] = {}
        with httpx.Client(base_url=engine.url, timeout=120) as client:
            bodies = _bodies(str(model_dir))
            for name, (route, body) in bodies.items():
                cases[name] = _record(client, route, body)
            for kind in ("chat", "completion"):
                route, body = bodies[kind]
                stop = _stop_for(_text(cases[kind]["answer"]))
                for suffix, extra in (("", {}), ("_stream", {"stream": True})):
                    for inc in (False, True):
                        b = {**body, **extra, "stop": [stop], "include_stop_str_in_output": inc}
                        key = f"{kind}_stop{'_incl' if inc else ''}{suffix}"
                        cases[key] = _record(client, route, b)
    finally:
        engine.stop()
    text = json.dumps(cases, ensure_ascii=False, indent=1).replace(json.dumps(str(model_dir))[1:-1], MODEL)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
