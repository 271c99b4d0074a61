"""Conditional disaggregation through the router, against recording upstreams.

What each worker receives, the headers that tell a decode-only answer from a pair, the
decision metrics and debug log, and retries that switch between the two kinds. The rule
itself is unit-tested in tests/unit/test_disagg_decider.py; real vLLM engines in
tests/router/test_engine_conditional_pd.py.
"""

from __future__ import annotations

import io
import json

from router.logging_setup import configure_logging
from tests.support.inprocess_router import loads_are_zero, make_config, metrics_with, pd_workers, running_router
from tests.support.recording_upstream import text_reply, upstreams

SHORT = {"model": "tiny", "prompt": "hello there", "max_tokens": 4}
# About 2,000 estimated tokens (no tokenizer: characters / 4).
LONG = {"model": "tiny", "prompt": "a long and entirely new document. " * 240, "max_tokens": 4}


def decisions(metrics: str) -> dict[tuple[str, str], float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith("atom_mesh_disagg_decisions_total{"):
            labels, value = line.split("} ")
            fields = dict(part.split("=") for part in labels.split("{", 1)[1].split(","))
            found[(fields["decision"].strip('"'), fields["reason"].strip('"'))] = float(value)
    return found


async def test_short_prompt_goes_decode_only_and_a_long_one_as_a_pair() -> None:
    async with upstreams("p", "d") as (p, d):
        async with running_router(make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm")) as router:
            short = await router.post("/v1/completions", SHORT)
            assert short.status == 200
            assert short.headers["x-atom-decode-worker"] == d.url
            assert "x-atom-prefill-worker" not in short.headers and "x-atom-worker" not in short.headers
            assert p.requests() == []
            assert d.requests()[0].json == SHORT  # the client's body, no kv_transfer_params

            long = await router.post("/v1/completions", LONG)
            assert long.status == 200
            assert (long.headers["x-atom-prefill-worker"], long.headers["x-atom-decode-worker"]) == (p.url, d.url)
            assert len(p.requests()) == 1 and p.requests()[0].json["kv_transfer_params"] == {"do_remote_decode": True}
            assert len(d.requests()) == 2

            metrics = await metrics_with(router, "atom_mesh_disagg_uncached_tokens_count 2.0")
            assert decisions(metrics) == {("decode_only", "short_prompt"): 1.0, ("pair", "uncached_prompt"): 1.0}
            assert 'atom_mesh_placements_total{policy="round_robin",reason="round_robin",role="decode"} 2.0' in metrics
            assert 'atom_mesh_placements_total{policy="round_robin",reason="round_robin",role="prefill"} 1.0' in metrics
            assert loads_are_zero(router)


async def test_the_decision_and_its_reason_are_in_the_debug_log() -> None:
    out = io.StringIO()
    configure_logging("debug", json=True, stream=out)
    try:
        async with upstreams("p", "d") as (p, d):
            config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm")
            async with running_router(config) as router:
                resp = await router.post("/v1/completions", SHORT, headers={"x-request-id": "req-short"})
                assert resp.status == 200
    finally:
        configure_logging()
    lines = [json.loads(line) for line in out.getvalue().splitlines() if "disaggregation decision" in line]
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("request_id", "decision", "reason", "uncached_tokens")} == {
        "request_id": "req-short",
        "decision": "decode_only",
        "reason": "short_prompt",
        "uncached_tokens": 3,
    }


async def test_failed_decode_only_attempt_retries_as_a_pair() -> None:
    async with upstreams("p", "d") as (p, d):
        async with running_router(make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm")) as router:
            d.script("/v1/completions", text_reply("decode overloaded", 503))
            resp = await router.post("/v1/completions", SHORT)
            assert resp.status == 200
            assert resp.headers["x-atom-prefill-worker"] == p.url
            assert len(p.requests()) == 1 and len(d.requests()) == 2
            metrics = await metrics_with(router, 'reason="retry_as_pair"')
            assert decisions(metrics) == {("decode_only", "short_prompt"): 1.0, ("pair", "retry_as_pair"): 1.0}


async def test_failed_pair_retries_decode_only() -> None:
    async with upstreams("p", "d") as (p, d):
        async with running_router(make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm")) as router:
            p.script("/v1/completions", text_reply("prefill died", 500))
            resp = await router.post("/v1/completions", LONG)
            assert resp.status == 200
            assert "x-atom-prefill-worker" not in resp.headers and resp.headers["x-atom-decode-worker"] == d.url
            assert len(p.requests()) == 1 and len(d.requests()) == 1
            assert "kv_transfer_params" not in d.requests()[0].json
            metrics = await metrics_with(router, 'reason="retry_decode_only"')
            assert decisions(metrics) == {("pair", "uncached_prompt"): 1.0, ("decode_only", "retry_decode_only"): 1.0}


async def test_always_pair_pairs_even_a_short_prompt() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="vllm")
        config.disagg.always_pair = True
        async with running_router(config) as router:
            resp = await router.post("/v1/completions", SHORT)
            assert resp.status == 200 and resp.headers["x-atom-prefill-worker"] == p.url
            assert len(p.requests()) == 1
            assert decisions(await metrics_with(router, "atom_mesh_disagg_decisions_total{")) == {("pair", "always_pair"): 1.0}


async def test_sglang_pools_pair_a_short_prompt() -> None:
    async with upstreams("p", "d") as (p, d):
        config = make_config(workers=pd_workers([(p.url, None)], [d.url]), backend="sglang")
        async with running_router(config) as router:
            resp = await router.post("/v1/completions", SHORT)
            assert resp.status == 200 and resp.headers["x-atom-prefill-worker"] == p.url
            assert "bootstrap_room" in p.requests()[0].json and "bootstrap_room" in d.requests()[0].json
            assert decisions(await metrics_with(router, "atom_mesh_disagg_decisions_total{")) == {("pair", "backend_pairs"): 1.0}
