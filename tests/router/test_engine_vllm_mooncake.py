"""P/D through the router (`--backend vllm-mooncake`, concurrent) with vLLM's in-tree
MooncakeConnector over real Mooncake TCP on loopback.

The connector needs one CPU patch (`torch.accelerator.current_device_index()`), applied
by the test-only `tests/support/vllm_mooncake_cpu/sitecustomize.py` on the engines'
PYTHONPATH. Decode must answer exactly like the co-located reference, with prompt KV
pulled from prefill (decode's external prefix-cache hits grow).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from testbed.ports import free_port
from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from testbed.vllm_engine import DEFAULT_READY_TIMEOUT, external_prefix_hits, start_vllm
from tests.support.engine_cases import CASES, Case, ask, assert_same

# The first test also pays for starting the reference engine and the pair.
pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(1800)]

SHIM = Path(__file__).resolve().parents[1] / "support" / "vllm_mooncake_cpu"


def _engine_env(bootstrap_port: int) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SHIM), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "VLLM_HOST_IP": "127.0.0.1", "VLLM_MOONCAKE_BOOTSTRAP_PORT": str(bootstrap_port)}


@pytest.fixture(scope="module")
def mooncake_pair(tiny_llama: Path) -> Iterator[dict[str, ManagedProcess]]:
    pytest.importorskip("mooncake.engine", reason="needs mooncake-transfer-engine-non-cuda (the mooncake extra)")
    bootstrap_port = free_port()
    extra = {"mooncake_protocol": "tcp"}
    procs: dict[str, ManagedProcess] = {}
    try:
        procs["prefill"] = start_vllm(
            tiny_llama,
            kv_transfer_config={
                "kv_connector": "MooncakeConnector",
                "kv_role": "kv_producer",
                "kv_connector_extra_config": extra,
            },
            env=_engine_env(bootstrap_port),
            wait=False,
            name="vllm-mooncake-prefill",
        )
        procs["decode"] = start_vllm(
            tiny_llama,
            kv_transfer_config={
                "kv_connector": "MooncakeConnector",
                "kv_role": "kv_consumer",
                "kv_connector_extra_config": extra,
            },
            env=_engine_env(free_port()),
            wait=False,
            name="vllm-mooncake-decode",
        )
        procs["prefill"].wait_http_ready(timeout=DEFAULT_READY_TIMEOUT)
        procs["decode"].wait_http_ready(timeout=DEFAULT_READY_TIMEOUT)
        procs["router"] = start_router(
            "--pd-disaggregation",
            "--backend",
            "vllm-mooncake",
            "--prefill",
            procs["prefill"].url,
            str(bootstrap_port),
            "--decode",
            procs["decode"].url,
            "--policy",
            "round_robin",
            "--always-pair",  # every answer must come through the connector
        )
        yield procs
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pd_answers_like_colocated(case: Case, mooncake_pair, reference_answers, pd_prompts, tiny_llama: Path) -> None:
    client = OpenAI(base_url=mooncake_pair["router"].url + "/v1", api_key="none")
    assert_same(ask(client, str(tiny_llama), case, pd_prompts), reference_answers["direct"][case])


def test_decode_pulled_prompt_kv_over_mooncake(mooncake_pair, pd_prompts, tiny_llama: Path) -> None:
    def hits() -> float:
        with urllib.request.urlopen(mooncake_pair["decode"].url + "/metrics") as resp:
            return external_prefix_hits(resp.read().decode())

    before = hits()
    client = OpenAI(base_url=mooncake_pair["router"].url + "/v1", api_key="none")
    raw = client.completions.with_raw_response.create(
        model=str(tiny_llama), prompt=pd_prompts["long"] + " again", max_tokens=4, temperature=0
    )
    assert raw.headers["x-atom-decode-worker"] == mooncake_pair["decode"].url
    assert hits() > before
