"""P/D through the router (`--backend vllm`, serial) with vLLM's ExampleConnector.

The pair is a real prefill and a real decode vLLM CPU engine; KV moves through files in a
directory unique to this test session. Decode must answer exactly like the co-located
reference, and its metrics must show it loaded prompt KV from the connector (otherwise
equal answers could come from decode recomputing the prompt).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from testbed.processes import ManagedProcess
from testbed.router_process import start_router
from testbed.vllm_engine import DEFAULT_READY_TIMEOUT, external_prefix_hits, start_vllm
from tests.support.engine_cases import CASES, Case, ask, assert_same

# The first test also pays for starting the reference engine and the pair.
pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def example_pair(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ManagedProcess]]:
    storage = tmp_path_factory.mktemp("example-connector-kv")
    config = {
        "kv_connector": "ExampleConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"shared_storage_path": str(storage)},
    }
    procs: dict[str, ManagedProcess] = {}
    try:
        procs["prefill"] = start_vllm(tiny_llama, kv_transfer_config=config, wait=False, name="vllm-example-prefill")
        procs["decode"] = start_vllm(tiny_llama, kv_transfer_config=config, wait=False, name="vllm-example-decode")
        procs["prefill"].wait_http_ready(timeout=DEFAULT_READY_TIMEOUT)
        procs["decode"].wait_http_ready(timeout=DEFAULT_READY_TIMEOUT)
        procs["router"] = start_router(
            "--pd-disaggregation",
            "--backend",
            "vllm",
            "--prefill",
            procs["prefill"].url,
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
def test_pd_answers_like_colocated(case: Case, example_pair, reference_answers, pd_prompts, tiny_llama: Path) -> None:
    client = OpenAI(base_url=example_pair["router"].url + "/v1", api_key="none")
    assert_same(ask(client, str(tiny_llama), case, pd_prompts), reference_answers["direct"][case])


def test_decode_loaded_prompt_kv_from_the_connector(example_pair, reference_answers, pd_prompts, tiny_llama: Path) -> None:
    client = OpenAI(base_url=example_pair["router"].url + "/v1", api_key="none")
    raw = client.completions.with_raw_response.create(
        model=str(tiny_llama), prompt=pd_prompts["long"], max_tokens=4, temperature=0
    )
    assert raw.headers["x-atom-prefill-worker"] == example_pair["prefill"].url
    assert raw.headers["x-atom-decode-worker"] == example_pair["decode"].url
    with urllib.request.urlopen(example_pair["decode"].url + "/metrics") as resp:
        assert external_prefix_hits(resp.read().decode()) > 0
