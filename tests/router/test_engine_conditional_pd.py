"""Conditional disaggregation in front of a real vLLM CPU pair joined by our AtomKVConnector.

The router runs with the tiny model's tokenizer (prompt lengths in real tokens) and the
default rule: a short prompt goes decode-only (the prefill engine receives nothing, the
decode engine's external-KV counter does not move), a long uncached prompt goes as a pair
(decode loads its KV from prefill), and the long prompt asked again with a new ending goes
decode-only, served from decode's own prefix cache. Every answer must equal, in greedy
token ids and logprobs, what one engine answers on its own: the reference is the prefill
engine asked directly, since a request without kv_transfer_params never touches the
connector (as in tests/kv_connector/test_vllm_pd.py). The pair is the session's
`atomkv_pd`, which tests/kv_connector/test_vllm_pd.py uses too: the engines' counters are
compared before and after each step, never with absolute values.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from testbed.vllm_engine import external_prefix_hits
from tests.support.atomkv_pd import AtomKVEngines
from tests.support.shared_engine import SharedEngine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def conditional_pd(atomkv_pd: SharedEngine[AtomKVEngines], tiny_llama: Path) -> Iterator[dict[str, ManagedProcess]]:
    """The session's AtomKVConnector pair behind a router of this module's own."""
    engines = atomkv_pd.process
    with start_router(
        "--pd-disaggregation", "--backend", "vllm",
        "--prefill", engines.p.url, "--decode", engines.d.url,
        "--tokenizer-path", str(tiny_llama),
        "--worker-startup-check-interval", "0.5",
    ) as router:  # fmt: skip
        _wait_for("both workers ready", lambda: _ready_workers(router) == 2)
        yield {"kv_producer": engines.p, "kv_consumer": engines.d, "router": router}


def _ready_workers(router: ManagedProcess) -> int:
    workers = httpx.get(f"{router.url}/workers", timeout=10).json()["workers"]
    return sum(w["state"] == "ready" for w in workers)


def _wait_for(what: str, predicate) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within 60 s: {what}")
        time.sleep(0.1)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def _counters(engine: ManagedProcess) -> dict[str, float]:
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    names = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total")
    found = {n: sum(float(v) for v in re.findall(rf"^{re.escape(n)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)) for n in names}
    return {**found, "external": external_prefix_hits(text)}


def _settled(engine: ManagedProcess, requests: float) -> dict[str, float]:
    """The engine's counters once it counted `requests` finished requests (counted just after the answer)."""
    _wait_for(f"{engine.name} counted {requests} requests", lambda: _counters(engine)["vllm:request_success_total"] >= requests)
    return _counters(engine)


def _complete(url: str, model: str, prompt: str) -> tuple[httpx.Response, list[int], list[float]]:
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 1, "return_token_ids": True}
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    return resp, choice["token_ids"], choice["logprobs"]["token_logprobs"]


def test_short_goes_decode_only_long_as_a_pair_and_a_cached_long_prefix_decode_only(
    conditional_pd: dict[str, ManagedProcess], pd_prompts: dict[str, str], tiny_llama: Path
) -> None:
    prefill, decode, router = conditional_pd["kv_producer"], conditional_pd["kv_consumer"], conditional_pd["router"]
    model = str(tiny_llama)
    prompts = {"short": pd_prompts["short"], "long": pd_prompts["long"], "long again": pd_prompts["long"] + " And once more"}
    # The engines are shared with earlier tests: every count below is relative to now.
    asked_prefill = _counters(prefill)["vllm:request_success_total"]
    references = {name: _complete(prefill.url, model, text)[1:] for name, text in prompts.items()}
    asked_prefill += len(prompts)
    p0, d0 = _settled(prefill, asked_prefill), _counters(decode)

    # A few tokens: decode prefills them itself.
    resp, ids, logprobs = _complete(router.url, model, prompts["short"])
    assert resp.headers["x-atom-decode-worker"] == decode.url and "x-atom-prefill-worker" not in resp.headers
    assert (ids, logprobs) == (references["short"][0], pytest.approx(references["short"][1], abs=1e-4))
    d1 = _settled(decode, d0["vllm:request_success_total"] + 1)
    assert _counters(prefill) == p0, "the prefill engine got work for a decode-only request"
    assert d1["external"] == d0["external"]

    # 300+ uncached tokens: a pair; decode loads the prompt's KV through the connector.
    resp, ids, logprobs = _complete(router.url, model, prompts["long"])
    assert (resp.headers["x-atom-prefill-worker"], resp.headers["x-atom-decode-worker"]) == (prefill.url, decode.url)
    assert (ids, logprobs) == (references["long"][0], pytest.approx(references["long"][1], abs=1e-4))
    p2 = _settled(prefill, asked_prefill + 1)
    d2 = _settled(decode, d1["vllm:request_success_total"] + 1)
    assert d2["external"] > d1["external"]

    # The same long prefix with a new ending: decode holds the prefix, so it goes decode-only
    # and decode's own prefix cache serves it (no connector, no prefill).
    resp, ids, logprobs = _complete(router.url, model, prompts["long again"])
    assert resp.headers["x-atom-decode-worker"] == decode.url and "x-atom-prefill-worker" not in resp.headers
    assert (ids, logprobs) == (references["long again"][0], pytest.approx(references["long again"][1], abs=1e-4))
    d3 = _settled(decode, d2["vllm:request_success_total"] + 1)
    assert _counters(prefill) == p2
    assert d3["external"] == d2["external"]
    assert d3["vllm:prefix_cache_hits_total"] > d2["vllm:prefix_cache_hits_total"]

    decisions = {
        reason: _metric(router.url, f'atom_mesh_disagg_decisions_total{{decision="{decision}",reason="{reason}"}}')
        for decision, reason in (("decode_only", "short_prompt"), ("pair", "uncached_prompt"), ("decode_only", "cached_prefix"))
    }
    assert decisions == {"short_prompt": 1.0, "uncached_prompt": 1.0, "cached_prefix": 1.0}
