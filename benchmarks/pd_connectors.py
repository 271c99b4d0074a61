"""P/D with AtomKVConnector vs vLLM's in-tree MooncakeConnector, plus raw transfer bandwidth.

One run starts, in turn, a prefill+decode pair of vLLM CPU engines with each connector
(Mooncake TCP on loopback both times, same tiny model, same prompts), measures
  - TTFT: request start -> first streamed token from decode (the serial legs for ours,
    the concurrent legs for the in-tree connector, as a router would send them),
  - throughput: generated tokens/s with `--concurrency` requests in flight,
checks decode's greedy tokens against the prefill engine answering alone, then runs
`benchmarks/kv_transfer.py` and prints one table with ratios.

The in-tree MooncakeConnector fails on CPU at worker start
(`torch.accelerator.current_device_index()` without an accelerator); its engines here
get the shared test shim `tests/support/vllm_mooncake_cpu` (a sitecustomize that
patches that one call) on their PYTHONPATH. Our connector's engines run unpatched.

Run: .venv/bin/python benchmarks/pd_connectors.py [--prompts 12] [--prompt-len 600]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.kv_transfer import format_table as transfer_table  # noqa: E402
from benchmarks.kv_transfer import run as transfer_run  # noqa: E402
from testbed.models import build_tiny_model  # noqa: E402
from testbed.ports import free_port  # noqa: E402
from testbed.vllm_engine import atom_kv_transfer_config, start_vllm  # noqa: E402

TIMEOUT = aiohttp.ClientTimeout(total=600)
CPU_SHIM = REPO / "tests" / "support" / "vllm_mooncake_cpu"


class Pair:
    """A started P/D pair and how a router would drive it."""

    def __init__(self, name: str, model: Path):
        self.name = name
        self.model = str(model)
        env = {}
        if name == "atom":
            port = free_port()
            p_cfg, d_cfg = atom_kv_transfer_config("kv_producer", port), atom_kv_transfer_config("kv_consumer", port)
            p_env = d_env = None
        else:
            if not (CPU_SHIM / "sitecustomize.py").is_file():
                raise SystemExit(f"missing {CPU_SHIM}/sitecustomize.py: the CPU shim the in-tree MooncakeConnector needs")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CPU_SHIM), os.environ.get("PYTHONPATH")]))
            self.bootstrap = free_port()

            def cfg(role: str) -> dict:
                return {
                    "kv_connector": "MooncakeConnector",
                    "kv_role": role,
                    "kv_connector_extra_config": {"mooncake_protocol": "tcp"},
                }

            p_cfg, d_cfg = cfg("kv_producer"), cfg("kv_consumer")
            p_env = {**env, "VLLM_MOONCAKE_BOOTSTRAP_PORT": str(self.bootstrap)}
            d_env = {**env, "VLLM_MOONCAKE_BOOTSTRAP_PORT": str(free_port())}
        self.p = start_vllm(model, kv_transfer_config=p_cfg, env=p_env, wait=False, name=f"bench-{name}-p")
        self.d = start_vllm(model, kv_transfer_config=d_cfg, env=d_env, wait=False, name=f"bench-{name}-d")
        self.remote_engine_id: str | None = None

    async def ready(self, session: aiohttp.ClientSession) -> None:
        await asyncio.to_thread(self.p.wait_http_ready, "/health", timeout=900)
        await asyncio.to_thread(self.d.wait_http_ready, "/health", timeout=900)
        if self.name != "atom":
            async with session.get(f"http://127.0.0.1:{self.bootstrap}/query", timeout=TIMEOUT) as r:
                self.remote_engine_id = next(iter((await r.json()).values()))["engine_id"]

    def stop(self) -> None:
        self.p.stop()
        self.d.stop()

    async def generate(self, session: aiohttp.ClientSession, prompt: list[int], max_tokens: int) -> tuple[float, list[int]]:
        """(TTFT seconds, generated token ids) of one P/D request."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
        start = time.perf_counter()
        if self.name == "atom":
            pre = await _post(session, self.p.url, {**body, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}})
            params = pre["kv_transfer_params"]
            return await _stream(session, self.d.url, {**body, "stream": True, "kv_transfer_params": params}, start)
        tid = uuid.uuid4().hex
        prefill = _post(
            session, self.p.url, {**body, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True, "transfer_id": tid}}
        )
        decode = _stream(
            session,
            self.d.url,
            {
                **body,
                "stream": True,
                "kv_transfer_params": {
                    "do_remote_prefill": True,
                    "transfer_id": tid,
                    "remote_engine_id": self.remote_engine_id,
                    "remote_bootstrap_addr": f"http://127.0.0.1:{self.bootstrap}",
                },
            },
            start,
        )
        _, result = await asyncio.gather(prefill, decode)
        return result


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    async with session.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {await r.text()}")
        return await r.json()


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, start: float) -> tuple[float, list[int]]:
    ttft, tokens = None, []
    async with session.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {await r.text()}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            ids = [t for c in json.loads(line[5:]).get("choices", []) for t in c.get("token_ids") or []]
            if ids and ttft is None:
                ttft = time.perf_counter() - start
            tokens += ids
    if ttft is None:
        raise RuntimeError(f"{url} streamed no tokens")
    return ttft, tokens


async def measure(name: str, model: Path, prompts: list[list[int]], max_tokens: int, concurrency: int) -> dict:
    pair = Pair(name, model)
    try:
        async with aiohttp.ClientSession() as s:
            await pair.ready(s)
            for prompt in prompts[:2]:  # warm-up: first handshakes, allocator
                await pair.generate(s, prompt, max_tokens)
            ttfts, wrong, failed = [], 0, 0
            for prompt in prompts:
                try:
                    ttft, tokens = await pair.generate(s, prompt, max_tokens)
                except RuntimeError as e:  # counted, not fatal: an overloaded host can time transfers out
                    print(f"{name}: request failed: {e}", file=sys.stderr)
                    failed += 1
                    continue
                ref = await _post(
                    s,
                    pair.p.url,
                    {"model": str(model), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True},
                )
                wrong += tokens != ref["choices"][0]["token_ids"]
                ttfts.append(ttft)
            sem = asyncio.Semaphore(concurrency)

            async def one(prompt: list[int]) -> int:
                async with sem:
                    try:
                        return len((await pair.generate(s, prompt, max_tokens))[1])
                    except RuntimeError as e:
                        print(f"{name}: request failed: {e}", file=sys.stderr)
                        return -1

            start = time.perf_counter()
            counts = await asyncio.gather(*(one(p) for p in prompts * 2))
            wall = time.perf_counter() - start
            generated = sum(c for c in counts if c > 0)
            failed += sum(c < 0 for c in counts)
    finally:
        pair.stop()
    return {
        "name": name,
        "ttft_p50_ms": statistics.median(ttfts) * 1e3,
        "ttft_mean_ms": statistics.mean(ttfts) * 1e3,
        "tok_per_s": generated / wall,
        "req_per_s": 2 * len(prompts) / wall,
        "wrong": wrong,
        "failed": failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--prompt-len", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--transfer-mib", type=int, default=256)
    args = ap.parse_args()
    model = build_tiny_model("llama")
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 600) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
    rows = [asyncio.run(measure(n, model, prompts, args.max_tokens, args.concurrency)) for n in ("atom", "mooncake-in-tree")]
    transfer = transfer_run(args.transfer_mib)
    atom, intree = rows
    print(
        f"\n# P/D connectors, {datetime.date.today()}, {platform.node()} ({os.cpu_count()} CPUs), "
        f"{args.prompts} prompts x {args.prompt_len} tokens, {args.max_tokens} new tokens, concurrency {args.concurrency}"
    )
    print(f"{'connector':20} {'TTFT p50 ms':>12} {'TTFT mean ms':>13} {'tok/s':>8} {'req/s':>7} {'wrong':>6} {'failed':>7}")
    for r in rows:
        print(
            f"{r['name']:20} {r['ttft_p50_ms']:12.1f} {r['ttft_mean_ms']:13.1f} {r['tok_per_s']:8.1f} "
            f"{r['req_per_s']:7.2f} {r['wrong']:6d} {r['failed']:7d}"
        )
    print(
        f"{'atom / in-tree':20} {atom['ttft_p50_ms'] / intree['ttft_p50_ms']:12.2f} "
        f"{atom['ttft_mean_ms'] / intree['ttft_mean_ms']:13.2f} "
        f"{atom['tok_per_s'] / intree['tok_per_s']:8.2f} {atom['req_per_s'] / intree['req_per_s']:7.2f}"
    )
    print(f"\n# Raw KV transfer, {args.transfer_mib} MiB, 64 KiB pages, 2 processes on loopback")
    print(transfer_table(transfer))


if __name__ == "__main__":
    main()
