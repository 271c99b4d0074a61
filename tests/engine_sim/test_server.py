"""One worker over real HTTP: OpenAI shapes, determinism, bad input, metrics, cache stats."""

from __future__ import annotations

import json

import aiohttp

from engine_sim.config import EngineConfig, WorkerSpec
from tests.engine_sim.conftest import running_fleet

PROMPT = "You are a helpful assistant . " * 5 + "Tell me about the weather in Paris today"  # 38 tokens


async def sse_chunks(resp: aiohttp.ClientResponse) -> list[dict | str]:
    """Parse an SSE body into JSON chunks (and the final "[DONE]")."""
    out: list[dict | str] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_completion_json_and_stream_agree(http):
    async with running_fleet(WorkerSpec()) as fleet:
        url = fleet.workers[0].url
        async with http.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 6}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["prompt_tokens"] == len(PROMPT.split())
        assert body["usage"]["completion_tokens"] == 6
        text = body["choices"][0]["text"]
        assert len(text.split()) == 6

        req = {"prompt": PROMPT, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(f"{url}/v1/completions", json=req) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            chunks = await sse_chunks(r)
        assert chunks[-1] == "[DONE]"
        usage_chunk = chunks[-2]
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
        # The second identical prompt hit the prefix cache.
        assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        token_chunks = chunks[:-2]
        assert "".join(c["choices"][0]["text"] for c in token_chunks) == text
        assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * 5 + ["length"]


async def test_chat_shapes(http):
    async with running_fleet(WorkerSpec()) as fleet:
        url = fleet.workers[0].url
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
        ]
        async with http.post(f"{url}/v1/chat/completions", json={"messages": messages, "max_completion_tokens": 4}) as r:
            body = await r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        async with http.post(f"{url}/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "stream": True}) as r:
            chunks = await sse_chunks(r)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
        assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == body["choices"][0]["message"]["content"]


async def test_answers_depend_only_on_the_prompt(http):
    async with running_fleet(WorkerSpec(), WorkerSpec()) as fleet:
        texts = []
        for worker, prompt in ((fleet.workers[0], PROMPT), (fleet.workers[1], PROMPT), (fleet.workers[1], PROMPT + " please")):
            async with http.post(f"{worker.url}/v1/completions", json={"prompt": prompt, "max_tokens": 12}) as r:
                texts.append((await r.json())["choices"][0]["text"])
        assert texts[0] == texts[1]
        assert texts[0] != texts[2]


async def test_bad_input_gets_openai_errors(http):
    cfg = EngineConfig(time_scale=0.1, max_model_len=64)
    async with running_fleet(WorkerSpec(), cfg=cfg) as fleet:
        url = fleet.workers[0].url
        cases = [
            ("/v1/completions", b"{not json", 400, None),
            ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
            ("/v1/completions", {"prompt": "a b", "max_tokens": 0}, 400, "max_tokens"),
            ("/v1/completions", {"prompt": "a b", "n": 2}, 400, "n"),
            ("/v1/completions", {"prompt": "a b", "model": "other"}, 404, "model"),
            ("/v1/completions", {"prompt": "a " * 60, "max_tokens": 10}, 400, None),
            ("/v1/chat/completions", {"messages": []}, 400, "messages"),
            ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, 400, "messages"),
            ("/v1/completions", {"prompt": "a b", "stream": "yes"}, 400, "stream"),
        ]
        for path, payload, status, param in cases:
            kwargs = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
            async with http.post(url + path, **kwargs) as r:
                assert r.status == status, payload
                err = (await r.json())["error"]
                assert err["code"] == status and err["message"] and err["param"] == param
        stats = fleet.workers[0].snapshot()
        assert stats["rejected"] == len(cases) and stats["completed"] == 0


async def test_models_metrics_and_info(http):
    async with running_fleet(WorkerSpec(), model="my-model") as fleet:
        url = fleet.workers[0].url
        async with http.get(f"{url}/v1/models") as r:
            assert (await r.json())["data"][0]["id"] == "my-model"
        async with http.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}) as r:
            assert r.status == 200
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
        for name in (
            "vllm:num_requests_running{",
            "vllm:num_requests_waiting{",
            "vllm:gpu_cache_usage_perc{",
            "vllm:kv_cache_usage_perc{",
            "vllm:prefix_cache_queries_total{",
            "sglang:num_running_reqs{",
        ):
            assert name in text
        assert 'vllm:prompt_tokens_total{model_name="my-model"' in text
        async with http.get(f"{url}/health") as r:
            assert r.status == 200


async def test_fleet_stats_report_the_cache_hit_rate(http):
    async with running_fleet(WorkerSpec(), WorkerSpec(), admin_port=0) as fleet:
        long_prompt = " ".join(f"w{i}" for i in range(200))
        for _ in range(3):
            async with http.post(f"{fleet.workers[0].url}/v1/completions", json={"prompt": long_prompt, "max_tokens": 2}) as r:
                assert r.status == 200
        async with http.get(f"{fleet.admin_url}/sim/stats") as r:
            stats = await r.json()
        totals = stats["totals"]
        assert totals["completed"] == 3 and totals["prompt_tokens"] == 600
        # 200 tokens: 12 reusable blocks of 16 = 192 cached on each of the two repeats.
        assert totals["cached_tokens"] == 384
        assert abs(totals["cache_hit_rate"] - 384 / 600) < 1e-9
        async with http.post(f"{fleet.admin_url}/sim/reset") as r:
            assert (await r.json())["totals"]["received"] == 0
