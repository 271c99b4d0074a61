"""P/D with the ATOM model implementation on both sides (real vLLM CPU, AtomKVConnector).

Prefill and decode both run `AtomQwen3MoeForCausalLM`; the KV goes through our connector
over Mooncake TCP into vLLM's KV cache, which our model reads through vLLM's attention
layer. Decode's greedy tokens and logprobs must equal the producer answering alone, and
a tampered transfer must change them (so decode really used the pushed KV).
"""

from __future__ import annotations

import json
import random

import aiohttp
import pytest

from testbed.models import build_tiny_model
from testbed.ports import free_port
from testbed.vllm_engine import start_vllm
from tests.support.atomkv_pd import connector, start_producer
from tests.support.kv_faults import KVFaults
from tests.support.pd_client import complete, greedy_body, pd_legs

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ARCH = "AtomQwen3MoeForCausalLM"
MAX_TOKENS = 8
PROMPT_LENGTHS = [9, 129, 300]


@pytest.fixture(scope="module")
def atom_pd_pair(tmp_path_factory):
    """(model dir, producer, consumer, the producer's fault switches); started together, so their start-ups overlap."""
    model_dir = build_tiny_model("qwen3_moe")
    overrides = ["--hf-overrides", json.dumps({"architectures": [ARCH]})]
    faults = KVFaults(tmp_path_factory.mktemp("atom-p-faults"))
    procs = []
    try:
        procs.append(start_producer(model_dir, faults, "atom-kv_producer", extra_args=overrides))
        kv_config = connector("kv_consumer", free_port())
        procs.append(
            start_vllm(model_dir, kv_transfer_config=kv_config, extra_args=overrides, wait=False, name="atom-kv_consumer")
        )
        for proc in procs:
            proc.wait_http_ready("/health", timeout=900)
        yield model_dir, *procs, faults
    finally:
        for proc in procs:
            proc.stop()


def _body(model: str, length: int, seed: int) -> dict:
    rng = random.Random(seed)
    return greedy_body(model, [rng.randrange(3, 600) for _ in range(length)], MAX_TOKENS)


async def test_pd_with_atom_model_equals_colocated(atom_pd_pair) -> None:
    model_dir, p, d, faults = atom_pd_pair
    for proc in (p, d):
        assert f"Resolved architecture: {ARCH}" in proc.log_text()
    async with aiohttp.ClientSession() as s:
        for seed, length in enumerate(PROMPT_LENGTHS):
            body = _body(str(model_dir), length, seed)
            ref = await complete(s, p.url, body)
            assert ref.status == 200 and len(ref.token_ids) == MAX_TOKENS, ref
            got = await pd_legs(s, p.url, d.url, body)
            assert got.status == 200 and got.token_ids == ref.token_ids, f"prompt of {length} tokens"
            assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
        body = _body(str(model_dir), 200, 99)
        ref = await complete(s, p.url, body)
        faults.rotate_next_push()  # layer i+1's pages land in layer i (tests/support/kv_faults.py)
        tampered = await pd_legs(s, p.url, d.url, body)
    assert not faults.rotation_pending(), "the producer's push never went through the fault wrapper"
    assert tampered.status == 200 and tampered.token_ids != ref.token_ids
