"""A real co-located vLLM CPU engine behind the router (openai backend): same answers."""

from __future__ import annotations

import pytest

from router.tokenizer import load_tokenizer
from tests.support.engine_cases import CASES, TEMPLATE_CHATS, Case, assert_same

# reference_answers (tests/router/conftest.py) collects its answers from the shared engine
# here, the first module to read them: usefixtures makes this module one of the engine's
# users, so it runs with the others and the engine is up already.
pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.usefixtures("vllm_colocated")]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_router_answers_like_the_engine(case: Case, reference_answers) -> None:
    assert_same(reference_answers["router"][case], reference_answers["direct"][case])


def test_router_metrics_saw_the_traffic(reference_answers) -> None:
    metrics = reference_answers["router_metrics"]
    # 6 chat + 6 completions requests, all 200; the 3 streams per route (12 tokens each)
    # recorded a time to first token and an inter-event latency
    assert 'route="/v1/chat/completions",status="200"} 6.0' in metrics
    assert 'route="/v1/completions",status="200"} 6.0' in metrics
    for route in ("/v1/chat/completions", "/v1/completions"):
        assert f'atom_mesh_time_to_first_token_seconds_count{{route="{route}"}} 3.0' in metrics
        assert f'atom_mesh_inter_event_latency_seconds_count{{route="{route}"}} 3.0' in metrics


@pytest.mark.parametrize("name", TEMPLATE_CHATS)
def test_router_renders_chats_into_the_engines_token_ids(name: str, reference_answers, tiny_llama) -> None:
    """kv_aware matches chats by the ids of their rendered prompt: ours must be vLLM's."""
    tokenizer = load_tokenizer(str(tiny_llama))
    assert tokenizer is not None
    rendered = tokenizer.render_chat(TEMPLATE_CHATS[name])
    assert rendered is not None
    assert tokenizer.encode(rendered) == reference_answers["chat_tokens"][name]
