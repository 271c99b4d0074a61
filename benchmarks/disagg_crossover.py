"""Where a P/D pair starts to pay: uncached prompt length vs pair / decode-only, on the simulator.

    python -m benchmarks.disagg_crossover                      # 1 prefill + 1 decode worker, real time
    python -m benchmarks.disagg_crossover --background 32 --lengths 32 256 2048

For each prompt length, probes of that many uncached tokens go to one simulated fleet two ways,
one probe at a time, while `--background` streams keep the decode worker's batch busy:
- pair: this client plays the router's vLLM serial protocol (prefill leg on P with
  `do_remote_decode`, then the decode leg on D with P's `kv_transfer_params`), so the probe pays
  the second hop and the KV transfer;
- decode-only: the plain request goes to D, which prefills it itself, inside its decode batch.

With `--queued-prefills`, each probe first finds that many long prefill legs on P (the load
that `--disagg-max-prefill-queue` weighs). Per length and way it reports the probe's TTFT and
E2E (p50) and the longest pause the background decodes on D saw while the probe was being
prefilled (the cost a local prefill puts on everyone else decoding there). The crossover is
the shortest length at which decode-only's stall of the running decodes exceeds what the pair
costs the probe itself (its extra TTFT): from there on, moving the prefill off the decode
worker is worth its hop and transfer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.processes import SimFleetProcess
from benchmarks.workloads import random_text

WAYS = ("pair", "decode_only")


@dataclass
class Probe:
    length: int
    way: str
    start: float
    ttft_s: float
    e2e_s: float
    queued: int = 0  # prefill legs already on the prefill worker when the probe was sent


@dataclass
class Background:
    """Token arrival times of the streams that keep the decode batch busy."""

    stamps: list[list[float]] = field(default_factory=list)

    def longest_pause(self, start: float, end: float) -> float:
        """The longest gap between two tokens of one stream that overlaps [start, end]."""
        longest = 0.0
        for stamps in self.stamps:
            for before, after in zip(stamps, stamps[1:], strict=False):
                if after >= start and before <= end:
                    longest = max(longest, after - before)
        return longest


async def _stream_tokens(http: aiohttp.ClientSession, url: str, body: dict[str, Any], stamps: list[float]) -> None:
    """POST a streaming completion, appending each generated token's arrival time to `stamps` as it comes."""
    async with http.post(f"{url}/v1/completions", json={**body, "stream": True}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.strip()
            if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
                chunk = json.loads(line[5:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    stamps.append(time.perf_counter())


async def _stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/sim/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def _prefill_leg(http: aiohttp.ClientSession, p_url: str, prompt: str) -> dict[str, Any]:
    """A vLLM prefill leg (`do_remote_decode`): P prefills, answers one token and its kv_transfer_params."""
    body = {"prompt": prompt, "max_tokens": 1, "stream": False, "kv_transfer_params": {"do_remote_decode": True}}
    async with http.post(f"{p_url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"prefill leg answered {resp.status}: {(await resp.text())[:200]}")
        params: dict[str, Any] = (await resp.json())["kv_transfer_params"]
        return params


async def _wait_for_work(http: aiohttp.ClientSession, url: str, requests: int, timeout_s: float = 60.0) -> None:
    """Until the worker holds `requests` requests (running or waiting), within `timeout_s`."""
    deadline = time.perf_counter() + timeout_s
    while True:
        stats = await _stats(http, url)
        if stats["running"] + stats["waiting"] >= requests:
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{url} never held {requests} requests at once")
        await asyncio.sleep(0.002)


async def _probe(
    http: aiohttp.ClientSession, way: str, p_url: str, d_url: str, prompt: str, max_tokens: int
) -> tuple[float, float, float]:
    """(start, ttft, e2e) of one probe sent `way`."""
    body = {"prompt": prompt, "max_tokens": max_tokens}
    start = time.perf_counter()
    if way == "pair":
        body["kv_transfer_params"] = await _prefill_leg(http, p_url, prompt)
    stamps: list[float] = []
    await _stream_tokens(http, d_url, body, stamps)
    if not stamps:
        raise RuntimeError(f"the {way} probe got no tokens")
    return start, stamps[0] - start, stamps[-1] - start


async def sweep(
    p_url: str,
    d_url: str,
    lengths: Sequence[int],
    *,
    probes: int = 5,
    background: int = 16,
    background_output: int = 256,
    probe_output: int = 16,
    queued_prefills: Sequence[int] = (0,),
    queued_length: int = 2048,
    seed: int = 0,
) -> tuple[list[Probe], Background]:
    """Probe every length both ways (interleaved, one at a time) over a busy decode worker,
    each with each number in `queued_prefills` of `queued_length`-token prefill legs already
    on the prefill worker (what --disagg-max-prefill-queue weighs)."""
    rng = random.Random(seed)
    bg = Background()
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:

        async def keep_decoding(i: int) -> None:
            while not stop.is_set():
                body = {"prompt": f"background {i} {random_text(rng, 16)}", "max_tokens": background_output}
                stamps: list[float] = []
                bg.stamps.append(stamps)
                await _stream_tokens(http, d_url, body, stamps)

        tasks = [asyncio.create_task(keep_decoding(i)) for i in range(background)]
        try:
            await _wait_for_work(http, d_url, background)  # the background batch has formed
            done: list[Probe] = []
            for _ in range(probes):
                for queued in queued_prefills:
                    for length in lengths:
                        for way in WAYS:
                            ahead = [
                                asyncio.create_task(_prefill_leg(http, p_url, random_text(rng, queued_length)))
                                for _ in range(queued)
                            ]
                            try:
                                await _wait_for_work(http, p_url, queued)
                                start, ttft, e2e = await _probe(http, way, p_url, d_url, random_text(rng, length), probe_output)
                            finally:
                                await asyncio.gather(*ahead)
                            done.append(Probe(length, way, start, ttft, e2e, queued))
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return done, bg


def summarize_sweep(probes: list[Probe], bg: Background) -> list[dict[str, Any]]:
    """One row per (prefill queue, length): p50 TTFT/E2E per way, the decode stall of each way, the verdict."""
    rows = []
    for queued, length in sorted({(p.queued, p.length) for p in probes}):
        row: dict[str, Any] = {"queued_prefills": queued, "uncached_tokens": length}
        for way in WAYS:
            mine = [p for p in probes if p.queued == queued and p.length == length and p.way == way]
            row[f"{way}_ttft_ms"] = statistics.median(p.ttft_s for p in mine) * 1e3
            row[f"{way}_e2e_ms"] = statistics.median(p.e2e_s for p in mine) * 1e3
            # While this probe was prefilled (until its first token), how long did D's decodes stall?
            row[f"{way}_stall_ms"] = statistics.median(bg.longest_pause(p.start, p.start + p.ttft_s) for p in mine) * 1e3
        row["pair_extra_ttft_ms"] = row["pair_ttft_ms"] - row["decode_only_ttft_ms"]
        row["decode_only_extra_stall_ms"] = row["decode_only_stall_ms"] - row["pair_stall_ms"]
        row["pair_pays"] = row["decode_only_extra_stall_ms"] > row["pair_extra_ttft_ms"]
        rows.append(row)
    return rows


def crossover(rows: list[dict[str, Any]], queued: int = 0) -> int | None:
    """The shortest length from which on a pair pays at every longer length measured with
    `queued` prefills ahead (None: never)."""
    answer = None
    for row in reversed([r for r in rows if r["queued_prefills"] == queued]):
        if not row["pair_pays"]:
            break
        answer = row["uncached_tokens"]
    return answer


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'P queue':>8}{'uncached':>9}{'pair TTFT':>11}{'d-only TTFT':>12}{'pair E2E':>10}{'d-only E2E':>11}"
        f"{'pair stall':>11}{'d-only stall':>13}  pair pays?",
    ]
    for r in rows:
        lines.append(
            f"{r['queued_prefills']:>8}{r['uncached_tokens']:>9}{r['pair_ttft_ms']:>11.1f}{r['decode_only_ttft_ms']:>12.1f}"
            f"{r['pair_e2e_ms']:>10.1f}{r['decode_only_e2e_ms']:>11.1f}"
            f"{r['pair_stall_ms']:>11.1f}{r['decode_only_stall_ms']:>13.1f}  {'yes' if r['pair_pays'] else 'no'}"
        )
    lines.append(
        "(ms, p50 over the probes; stall = longest pause of the decode worker's background streams while the probe prefilled)"
    )
    return "\n".join(lines)


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    out = [
        "| prefill queue | uncached tokens | pair TTFT | decode-only TTFT | pair E2E | decode-only E2E "
        "| decode stall, pair | decode stall, decode-only | pair pays? |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['queued_prefills']} | {r['uncached_tokens']} | {r['pair_ttft_ms']:.1f} | {r['decode_only_ttft_ms']:.1f} "
            f"| {r['pair_e2e_ms']:.1f} "
            f"| {r['decode_only_e2e_ms']:.1f} | {r['pair_stall_ms']:.1f} | {r['decode_only_stall_ms']:.1f} "
            f"| {'yes' if r['pair_pays'] else 'no'} |"
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.disagg_crossover", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--probes", type=int, default=5, help="Probes per length and way.")
    p.add_argument("--background", type=int, default=16, help="Streams decoding on the decode worker throughout.")
    p.add_argument(
        "--queued-prefills", type=int, nargs="*", default=[0], help="Prefill legs put on the prefill worker ahead of each probe."
    )
    p.add_argument("--queued-length", type=int, default=2048, help="Prompt tokens of each queued prefill leg.")
    p.add_argument("--sim-args", default="", help="Extra engine_sim flags, one string.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="Also print the table as Markdown.")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    fleet = SimFleetProcess(2, shlex.split(args.sim_args), pd_protocol="vllm")
    try:
        p_url, d_url = fleet.urls("prefill")[0], fleet.urls("decode")[0]
        probes, bg = asyncio.run(
            sweep(
                p_url,
                d_url,
                args.lengths,
                probes=args.probes,
                background=args.background,
                queued_prefills=args.queued_prefills,
                queued_length=args.queued_length,
                seed=args.seed,
            )
        )
    finally:
        fleet.stop()
    rows = summarize_sweep(probes, bg)
    print(format_rows(rows))
    for queued in args.queued_prefills:
        print(f"crossover with {queued} prefills queued: a pair pays from {crossover(rows, queued)} uncached tokens on")
    if args.markdown:
        print(markdown_rows(rows))


if __name__ == "__main__":
    main()
