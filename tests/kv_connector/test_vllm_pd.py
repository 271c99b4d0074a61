"""AtomKVConnector in real vLLM CPU engines: a producer and a consumer over Mooncake TCP.

One P/D pair serves the whole module (engines are expensive on 2 cores): the session's
`atomkv_pd` engines (tests/support/atomkv_pd.py), shared with
tests/router/test_engine_conditional_pd.py. The reference output is the producer engine
answering the same prompt on its own (a request without kv_transfer_params never touches
the connector): decode must produce the same greedy token ids and logprobs from the
pushed KV. Faults are injected by the test-only transport wrapper
(tests/support/kv_faults.py) in the producers' processes, steered by flag files: the
tamper test rotates one push across layers, the kill test stalls a push on a producer of
its own (started with the pair) and kills that producer mid-transfer, so the tests run
in any order.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal

import aiohttp
import pytest

from kv_connector.identity import PROTOCOL_VERSION
from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from tests.support.atomkv_pd import TRANSFER_TIMEOUT_S, AtomKVEngines
from tests.support.pd_client import complete, greedy_body, pd_legs
from tests.support.shared_engine import SharedEngine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

MAX_TOKENS = 8
# 1 token up to several 128-token CPU blocks, with block-boundary cases.
PROMPT_LENGTHS = [1, 9, 127, 128, 129, 300, 700]


@pytest.fixture(scope="module")
def engines(atomkv_pd: SharedEngine[AtomKVEngines]) -> AtomKVEngines:
    """The session's AtomKVConnector engines (the pair and the doomed producer), started
    together on first use; tests/router/test_engine_conditional_pd.py uses the pair too."""
    return atomkv_pd.process


@pytest.fixture(scope="module")
def pd_pair(engines: AtomKVEngines) -> tuple[ManagedProcess, ManagedProcess]:
    return engines.p, engines.d


@pytest.fixture(scope="module")
def router(pd_pair):
    p, d = pd_pair
    # --always-pair: every prompt length must go through the connector, short ones too.
    proc = start_router(
        "--pd-disaggregation", "--backend", "vllm", "--prefill", p.url, "--decode", d.url,
        "--policy", "round_robin", "--always-pair",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


def _prompt(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 600) for _ in range(length)]


def _body(model: str, prompt: list[int], stream: bool) -> dict:
    return greedy_body(model, prompt, MAX_TOKENS, stream=stream)


async def _reference(session, p_url: str, body: dict):
    ref = await complete(session, p_url, {**body, "stream": False})
    assert ref.status == 200 and len(ref.token_ids) == MAX_TOKENS, ref
    return ref


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_router_pd_output_equals_colocated(pd_pair, router, tiny_llama, stream):
    p, _ = pd_pair
    async with aiohttp.ClientSession() as s:
        for i, length in enumerate(PROMPT_LENGTHS):
            body = _body(str(tiny_llama), _prompt(length, seed=i), stream)
            ref = await _reference(s, p.url, body)
            got = await complete(s, router.url, body)
            assert got.status == 200 and got.error is None, got
            assert got.token_ids == ref.token_ids, f"prompt of {length} tokens"
            assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-4)


async def test_tampered_kv_changes_the_output(engines, tiny_llama):
    """One push lands layer i+1's pages in layer i: decode must notice (it really reads the KV)."""
    p, d = engines.p, engines.d
    async with aiohttp.ClientSession() as s:
        body = _body(str(tiny_llama), _prompt(200, seed=99), stream=False)
        ref = await _reference(s, p.url, body)
        honest = await pd_legs(s, p.url, d.url, body)
        engines.p_faults.rotate_next_push()
        tampered = await pd_legs(s, p.url, d.url, body)
    assert honest.token_ids == ref.token_ids
    assert not engines.p_faults.rotation_pending(), "the producer's push never went through the fault wrapper"
    assert tampered.status == 200 and tampered.token_ids != ref.token_ids


async def test_32_concurrent_mixed_requests(pd_pair, router, tiny_llama):
    p, _ = pd_pair
    rng = random.Random(5)
    # Mixed lengths up to 3 blocks (the 700-token prompts of the parity test would make this
    # test minutes long on 2 cores without adding coverage), half streamed, repeats included
    # so decode's own prefix cache is hit too.
    lengths = [n for n in PROMPT_LENGTHS if n <= 300]
    cases = [(_prompt(rng.choice(lengths), seed=1000 + i % 12), i % 2 == 1) for i in range(32)]
    async with aiohttp.ClientSession() as s:
        refs = {}
        for prompt, _ in cases:
            key = tuple(prompt)
            if key not in refs:
                refs[key] = await _reference(s, p.url, _body(str(tiny_llama), prompt, False))
        results = await asyncio.gather(
            *(complete(s, router.url, _body(str(tiny_llama), prompt, stream)) for prompt, stream in cases)
        )
    for (prompt, stream), got in zip(cases, results, strict=True):
        assert got.status == 200 and got.error is None, got
        assert got.token_ids == refs[tuple(prompt)].token_ids, f"{len(prompt)} tokens, stream={stream}"


async def test_unusable_params_fail_cleanly_and_decode_keeps_serving(pd_pair, tiny_llama):
    p, d = pd_pair
    async with aiohttp.ClientSession() as s:
        body = _body(str(tiny_llama), _prompt(50, seed=7), stream=False)
        wrong_model = await pd_legs(s, p.url, d.url, body, extra_params={"kv_fingerprint": "another-model"})
        assert wrong_model.status >= 500 and "error" in wrong_model.error
        stale = await pd_legs(s, p.url, d.url, body, extra_params={"remote_engine_id": "previous-run"})
        assert stale.status >= 500
        other_build = await pd_legs(s, p.url, d.url, body, extra_params={"kv_protocol_version": PROTOCOL_VERSION + 1})
        assert other_build.status >= 500 and "error" in other_build.error
        again = await pd_legs(s, p.url, d.url, body)
        assert again.status == 200 and again.token_ids == (await _reference(s, p.url, body)).token_ids


async def test_prefill_killed_mid_transfer_fails_decode_request_cleanly(engines, tiny_llama):
    """A producer killed while its push is in flight: decode answers with an error (no hang) and keeps serving."""
    doomed, d, faults = engines.doomed, engines.d, engines.doomed_faults
    async with aiohttp.ClientSession() as s:
        body = _body(str(tiny_llama), _prompt(300, seed=3), stream=False)
        # The producer accepts the push and stalls it before writing; once it is stalled, we kill it.
        faults.stall_pushes()
        pending = asyncio.create_task(pd_legs(s, doomed.url, d.url, body))
        await asyncio.to_thread(faults.wait_stalled, TRANSFER_TIMEOUT_S)
        os.killpg(doomed.pid, signal.SIGKILL)
        failed = await pending
        assert failed.status >= 500 and "error" in failed.error, failed
        alone = await complete(s, d.url, body)  # no kv_transfer_params: decode prefills itself
        assert alone.status == 200 and len(alone.token_ids) == MAX_TOKENS
