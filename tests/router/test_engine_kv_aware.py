"""`--policy kv_aware` in front of two real vLLM CPU engines that publish KV events.

Each engine runs with `--kv-events-config` (ZMQ PUB bound on a free port); the router
finds each engine's publisher by asking it (`GET /kv_event_sources`), subscribes, indexes
the blocks the engines report, and
must send a request whose prompt prefix one engine already cached to that engine, every
time, while a prompt nobody cached is placed by load. Prompts are token ids, which the
engines cache exactly as sent (block size 128 on CPU), and chats, which the router renders
with the model's chat template and tokenizes (`--tokenizer-path`) as the engine does.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.tokenizer import load_tokenizer
from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from testbed.vllm_engine import DEFAULT_READY_TIMEOUT, start_vllm

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _kv_events(port: int) -> list[str]:
    # A wildcard host makes vLLM bind (a plain host makes it connect to a subscriber).
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{port}"}
    return ["--kv-events-config", json.dumps(config)]


@pytest.fixture(scope="module")
def fleet(tiny_llama: Path) -> Iterator[tuple[ManagedProcess, list[ManagedProcess]]]:
    engines: list[ManagedProcess] = []
    procs: list[ManagedProcess] = []
    try:
        for i in range(2):  # started together: their start-ups overlap
            engines.append(start_vllm(tiny_llama, extra_args=_kv_events(free_port()), wait=False, name=f"vllm-kv-events-{i}"))
        procs += engines
        for engine in engines:
            engine.wait_http_ready("/health", timeout=DEFAULT_READY_TIMEOUT)
        urls = [e.url for e in engines]
        router = start_router(
            "--policy", "kv_aware", "--worker-urls", *urls, "--worker-startup-check-interval", "0.5",
            "--tokenizer-path", str(tiny_llama),
        )
        procs.append(router)
        yield router, engines
    finally:
        for proc in reversed(procs):
            proc.stop()


def _complete(router: ManagedProcess, model: str, prompt: list[int]) -> str:
    """One completion through the router; returns the URL of the engine that served it."""
    body = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0}
    r = httpx.post(f"{router.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["choices"], r.text
    return r.headers["x-atom-worker"]


def _metric(router: ManagedProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _wait_for(what: str, predicate, router: ManagedProcess) -> None:
    for _ in range(300):  # bounded: 30 s
        if predicate():
            return
        time.sleep(0.1)
    kv_lines = [line for line in httpx.get(f"{router.url}/metrics", timeout=10).text.splitlines() if "kv" in line]
    raise AssertionError(f"never happened: {what}; router's KV metrics: {kv_lines}")


def _ready(router: ManagedProcess) -> list[dict]:
    workers = httpx.get(f"{router.url}/workers", timeout=10).json()["workers"]
    return [w for w in workers if w["state"] == "ready"]


def test_cached_prefix_goes_to_the_engine_that_holds_it(fleet, tiny_llama: Path) -> None:
    router, engines = fleet
    model = str(tiny_llama)
    _wait_for("both engines registered", lambda: len(_ready(router)) == 2, router)
    ids = {w["url"]: w["id"] for w in _ready(router)}
    rng = random.Random(7)
    for _ in range(2):  # two prefixes: each must stick to whichever engine cached it first
        prefix = [rng.randrange(3, 600) for _ in range(300)]  # 2 full blocks of 128
        blocks_before = {url: _metric(router, "atom_mesh_kv_indexed_blocks", worker_id=wid) for url, wid in ids.items()}
        holder = _complete(router, model, prefix)
        # The engine reports the prompt's 2 full blocks; wait until the router indexed them.
        _wait_for(
            "the holder's blocks reached the router's index",
            lambda holder=holder, before=blocks_before: (
                _metric(router, "atom_mesh_kv_indexed_blocks", worker_id=ids[holder]) >= before[holder] + 2
            ),
            router,
        )
        hits_before = _metric(router, "atom_mesh_placements_total", policy="kv_aware", reason="kv_hit")
        for i in range(4):
            assert _complete(router, model, prefix + [rng.randrange(3, 600) for _ in range(5 + i)]) == holder
        assert _metric(router, "atom_mesh_placements_total", policy="kv_aware", reason="kv_hit") == hits_before + 4
        assert _metric(router, "atom_mesh_kv_events_total", worker_id=ids[holder], type="BlockStored") >= 1
    assert set(ids) == {e.url for e in engines}  # the router found both engines' publishers itself


def _chat(router: ManagedProcess, model: str, system: str, question: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 2,
        "temperature": 0,
    }
    r = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["choices"], r.text
    return r.headers["x-atom-worker"]


def test_chats_sharing_a_long_system_prompt_go_to_the_engine_that_holds_it(fleet, tiny_llama: Path) -> None:
    router, _engines = fleet
    model = str(tiny_llama)
    _wait_for("both engines registered", lambda: len(_ready(router)) == 2, router)
    ids = {w["url"]: w["id"] for w in _ready(router)}
    tokenizer = load_tokenizer(model)
    assert tokenizer is not None
    rng = random.Random(11)
    words = " ".join(rng.choice(("prefill", "decode", "cache", "router", "block", "engine")) for _ in range(400))
    system = f"You are the fleet's assistant. {words}"
    rendered = tokenizer.render_chat({"messages": [{"role": "system", "content": system}]}) or ""
    assert len(tokenizer.encode(rendered)) > 2 * 128, "the system prompt must span two KV blocks"
    blocks_before = {url: _metric(router, "atom_mesh_kv_indexed_blocks", worker_id=wid) for url, wid in ids.items()}
    holder = _chat(router, model, system, "What runs first?")
    _wait_for(
        "the holder's blocks of the chat reached the router's index",
        lambda: _metric(router, "atom_mesh_kv_indexed_blocks", worker_id=ids[holder]) >= blocks_before[holder] + 2,
        router,
    )
    hits_before = _metric(router, "atom_mesh_placements_total", policy="kv_aware", reason="kv_hit")
    for question in ("And then?", "Which worker decodes?", "How long does the cache live?", "Why two hops?"):
        assert _chat(router, model, system, question) == holder
    assert _metric(router, "atom_mesh_placements_total", policy="kv_aware", reason="kv_hit") == hits_before + 4
