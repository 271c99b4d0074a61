"""Measure what preparing a prompt costs the router: chat template render + encode, per
request, at 1k / 8k / 32k prompt tokens, and whether encoding in a worker thread keeps
the event loop responsive (does `tokenizers` release the GIL while it encodes?).

`per_request_path` is what one gRPC chat costs the router before it reaches the engine:
prepare (parse, validate, tokenize for placement) plus the gRPC codec's request (which
reuses prepare's ids), against the same prepare plus a second render + encode (what the
codec did before the prompt was kept on `PreparedRequest`).

    python -m tests.generation.measure_prompt_cost

Prints one JSON object. Numbers are wall-clock medians on this machine with the tiny
model's byte-level BPE tokenizer (docs/router-side-processing.md quotes a run).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from router.generation.inputs import prompt_input, prompt_input_async
from router.prepare import CHAT_ROUTE, prepare_request, prepare_request_async
from router.tokenizer import HFTokenizer, ModelTokenizers
from router.transports.openai_codec import OpenAICodec
from router.workers.worker import Worker
from testbed.models import build_tiny_model

SIZES = (1024, 8192, 32768)
SENTENCE = "The router renders the chat template and encodes the prompt 東京 😀 before placing it. "


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def _chat_of(tokenizer: HFTokenizer, tokens: int) -> dict[str, Any]:
    per_sentence = len(tokenizer.encode(SENTENCE))
    text = SENTENCE * (tokens // per_sentence + 1)
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}


async def _max_loop_lag_ms(work: Callable[[], Any]) -> float:
    """The longest the loop went without running a 1 ms ticker while `work` ran."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    await work()
    done.set()
    await task
    return round(max(gaps) * 1000, 2)


def _per_request_path(tokenizer: HFTokenizer) -> dict[str, Any]:
    tokenizers = ModelTokenizers(tokenizer)
    codec = OpenAICodec(tokenizers)
    worker = Worker("grpc://127.0.0.1:1", models=frozenset({"m"}))
    loop = asyncio.new_event_loop()
    out: dict[str, Any] = {}
    for size in SIZES:
        raw = orjson.dumps({"model": "m", "max_tokens": 16, **_chat_of(tokenizer, size)})

        def prepare(raw: bytes = raw) -> Any:
            return prepare_request(CHAT_ROUTE, raw, {}, request_id_headers=[], session_header="x", tokenizer=tokenizers)

        def once() -> None:
            loop.run_until_complete(codec.request(prepare(), worker))

        def twice() -> None:  # the codec tokenizing the prompt again, as it did
            prepared = prepare()
            prompt_input(tokenizer, prepared.body, chat=True, max_model_len=None)

        repeats = 30 if size <= 8192 else 10
        out[str(size)] = {"tokenized_once_ms": _median_ms(once, repeats), "tokenized_twice_ms": _median_ms(twice, repeats)}
    loop.close()
    return out


def main() -> None:
    tokenizer = HFTokenizer(build_tiny_model("llama"))
    result: dict[str, Any] = {"per_request": {}, "event_loop_max_lag_ms": {}}
    for size in SIZES:
        body = _chat_of(tokenizer, size)
        text = tokenizer.render_chat(body)
        assert text is not None
        repeats = 30 if size <= 8192 else 10
        ids = prompt_input(tokenizer, body, chat=True, max_model_len=None).input_ids
        result["per_request"][str(size)] = {
            "prompt_tokens": len(ids),
            "prompt_chars": len(text),
            "render_ms": _median_ms(lambda body=body: tokenizer.render_chat(body), repeats),
            "encode_ms": _median_ms(lambda text=text: tokenizer.encode(text), repeats),
            "encode_text_ms": _median_ms(
                lambda text=text: tokenizer.encode_text(text, add_special_tokens=False), repeats
            ),
            "render_and_encode_ms": _median_ms(
                lambda body=body: prompt_input(tokenizer, body, chat=True, max_model_len=None), repeats
            ),
        }
    result["per_request_path"] = _per_request_path(tokenizer)
    big = _chat_of(tokenizer, SIZES[-1])

    async def inline() -> None:
        prompt_input(tokenizer, big, chat=True, max_model_len=None)

    async def off_loop() -> None:
        await prompt_input_async(tokenizer, big, chat=True, max_model_len=None, off_loop_chars=0)

    async def thread_holding_gil() -> None:
        text = tokenizer.render_chat(big) or ""
        await asyncio.to_thread(tokenizer.encode, text)  # Tokenizer.encode: keeps the GIL

    async def prepare_off_loop() -> None:
        raw = orjson.dumps({"model": "m", **big})
        await prepare_request_async(CHAT_ROUTE, raw, {}, request_id_headers=[], session_header="x", tokenizer=tokenizer)

    async def both() -> None:
        lag = result["event_loop_max_lag_ms"]
        lag["32k_inline"] = await _max_loop_lag_ms(inline)
        lag["32k_to_thread_with_Tokenizer.encode"] = await _max_loop_lag_ms(thread_holding_gil)
        lag["32k_prompt_input_async"] = await _max_loop_lag_ms(off_loop)
        lag["32k_prepare_request_async"] = await _max_loop_lag_ms(prepare_off_loop)

    asyncio.run(both())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
