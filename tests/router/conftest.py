"""Fixtures for the router's real-engine tests: prompts and the co-located reference.

The reference answers come from the session's shared plain engine (`vllm_colocated`),
collected by the first module that reads them: `test_engine_colocated.py`, which runs with
the shared engine's other users (tests/conftest.py groups them). The engine is released
when that group ends, so the P/D pairs of the later modules (one test module each, run one
after the other) never share the machine with it; those modules only read the answers.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI

from testbed.router_process import start_router
from tests.support.engine_cases import CASES, Answer, Case, ask, build_prompts, engine_chat_tokens
from tests.support.shared_engine import SharedEngine


def _settled_metrics(url: str, expected_requests: int) -> str:
    """The router's /metrics once every request was counted (a request is counted just
    after its last byte went out, so a scrape right after the answer can miss it)."""
    for _ in range(100):
        with urllib.request.urlopen(url + "/metrics") as resp:
            text = resp.read().decode()
        counted = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("atom_mesh_requests_total{")
        )
        if counted >= expected_requests:
            return text
        time.sleep(0.05)
    return text


@pytest.fixture(scope="session")
def pd_prompts(tiny_llama: Path) -> dict[str, str]:
    return build_prompts(tiny_llama)


@pytest.fixture(scope="session")
def reference_answers(
    tiny_llama: Path, pd_prompts: dict[str, str], request: pytest.FixtureRequest
) -> dict[str, dict[Case, Answer]]:
    """Answers of one plain co-located vLLM engine, asked directly ("direct") and through
    the router with the openai backend ("router"), and the engine's token ids of the
    rendered `TEMPLATE_CHATS` ("chat_tokens").

    The engine is looked up here, not taken as an argument: as an argument it would count
    every P/D module that reads these answers as a user of the shared engine, which would
    then stay up beside their pairs. (A P/D module run on its own collects the answers
    itself; the engine then idles beside its pair until that module ends.)"""
    engine: SharedEngine = request.getfixturevalue("vllm_colocated")
    model = str(tiny_llama)
    direct = {case: ask(OpenAI(base_url=engine.url + "/v1", api_key="none"), model, case, pd_prompts) for case in CASES}
    chat_tokens = engine_chat_tokens(engine.url, model)
    router = start_router("--worker-urls", engine.url, "--policy", "round_robin")
    try:
        client = OpenAI(base_url=router.url + "/v1", api_key="none")
        via_router = {case: ask(client, model, case, pd_prompts) for case in CASES}
        metrics = _settled_metrics(router.url, expected_requests=len(CASES))
    finally:
        router.stop()
    return {"direct": direct, "router": via_router, "router_metrics": metrics, "chat_tokens": chat_tokens}  # type: ignore[dict-item]
