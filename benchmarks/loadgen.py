"""Open-loop load generator: sends a trace at its arrival times, streams, measures TTFT/E2E.

Every request streams (with usage) so time-to-first-token is what the client sees: the
first SSE chunk that carries generated text. A request that fails (HTTP error, broken
stream, timeout) is recorded with its reason, never dropped.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from benchmarks.workloads import TraceRequest, Workload


@dataclass
class RequestResult:
    group: str
    ok: bool
    status: int
    ttft_s: float | None
    e2e_s: float
    output_tokens: int
    error: str = ""
    # Which workers the router says it used (`route_of`): "pair", "decode_only", "single" or "".
    route: str = ""


def route_of(headers: Mapping[str, str]) -> str:
    """The route a router's answer headers name: a P/D pair (`x-atom-prefill-worker` and
    `x-atom-decode-worker`), decode-only (the decode header alone), one co-located worker
    (`x-atom-worker`), or "" when the router names none (the Rust peers)."""
    if "x-atom-decode-worker" in headers:
        return "pair" if "x-atom-prefill-worker" in headers else "decode_only"
    return "single" if "x-atom-worker" in headers else ""


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "text" in c:
        return c.get("text") or ""
    return (c.get("delta") or {}).get("content") or ""


async def _send(session: aiohttp.ClientSession, base_url: str, req: TraceRequest) -> RequestResult:
    body = {**req.body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with session.post(base_url + req.path, json=body, headers=req.headers) as resp:
            route = route_of(resp.headers)
            if resp.status != 200:
                text = (await resp.text())[:200]
                return RequestResult(req.group, False, resp.status, None, time.perf_counter() - start, 0, text, route)
            done = False
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    error = str(chunk["error"])[:200]
                    return RequestResult(req.group, False, 200, ttft, time.perf_counter() - start, tokens, error, route)
                if _chunk_text(chunk):
                    tokens += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens"):
                    tokens = usage["completion_tokens"]
            if not done:
                error = "stream ended without [DONE]"
                return RequestResult(req.group, False, 200, ttft, time.perf_counter() - start, tokens, error, route)
            return RequestResult(req.group, True, 200, ttft, time.perf_counter() - start, tokens, route=route)
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
        return RequestResult(req.group, False, 0, ttft, time.perf_counter() - start, tokens, f"{type(exc).__name__}: {exc}"[:200])


async def run_trace(
    base_url: str | Sequence[str], workload: Workload, timeout_s: float = 600.0
) -> tuple[list[RequestResult], float]:
    """Send every request of `workload` at its arrival time; return results and wall time.

    Several base URLs (router replicas) take the requests round-robin, in trace order, as a
    load balancer in front of them would."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def at_arrival(req: TraceRequest, url: str) -> RequestResult:
            delay = start + req.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            return await _send(session, url, req)

        results = await asyncio.gather(*(at_arrival(r, urls[i % len(urls)]) for i, r in enumerate(workload.requests)))
        return list(results), time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile `q` (0-100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok]
    out_tokens = sum(r.output_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = f"{r.status} {r.error[:80]}"
            errors[key] = errors.get(key, 0) + 1
    routes: dict[str, int] = {}
    for r in ok:
        if r.route:
            routes[r.route] = routes.get(r.route, 0) + 1
    disaggregated = routes.get("pair", 0) + routes.get("decode_only", 0)
    return {
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "ttft_ms": {f"p{q}": percentile(ttft, q) * 1e3 for q in (50, 90, 99)},
        "e2e_ms": {f"p{q}": percentile(e2e, q) * 1e3 for q in (50, 90, 99)},
        "throughput_rps": len(ok) / wall_s if wall_s else 0.0,
        "output_tok_per_s": out_tokens / wall_s if wall_s else 0.0,
        "wall_s": wall_s,
        "errors": errors,
        "routes": routes,
        # Of the answers a P/D router named a route for, the share that went decode-only.
        "decode_only_share": routes.get("decode_only", 0) / disaggregated if disaggregated else math.nan,
    }


def summarize_by(results: list[RequestResult], wall_s: float, kind_of: Callable[[str], str]) -> dict[str, dict[str, Any]]:
    """`summarize` per kind of request (`kind_of(group)`), e.g. the mixed workload's short/rag/session."""
    kinds: dict[str, list[RequestResult]] = {}
    for r in results:
        kinds.setdefault(kind_of(r.group), []).append(r)
    return {kind: summarize(rs, wall_s) for kind, rs in sorted(kinds.items())}


def results_as_dicts(results: list[RequestResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
