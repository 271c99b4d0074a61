"""Reading engines' load numbers from their Prometheus text: a real vLLM scrape, the
simulator's (vLLM and SGLang names at once), SGLang's per-rank label sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_sim.metrics import render_metrics
from router.workers.engine_load import EngineLoad, EngineMetricsError, parse_engine_load

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_real_vllm_scrape_while_it_generates():
    # Captured from a vLLM 0.32 CPU engine (the tiny test Llama) with three long
    # generations in flight; see fixtures/README.md.
    text = (FIXTURES / "vllm_metrics.txt").read_text()
    load = parse_engine_load(text, sampled_at=5.0)
    expected = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{", "vllm:kv_cache_usage_perc{"))
    }
    assert load.running == expected["vllm:num_requests_running"] >= 1
    assert load.waiting == expected["vllm:num_requests_waiting"]
    assert load.kv_usage == pytest.approx(expected["vllm:kv_cache_usage_perc"]) and 0 < load.kv_usage <= 1
    assert load.sampled_at == 5.0 and load.requests == load.running + load.waiting


def test_the_simulator_exports_both_families_and_is_read_once():
    snapshot = {"running": 3, "waiting": 9, "kv_usage": 0.25, "cached_tokens": 0, "prompt_tokens": 0}
    snapshot |= {"generated_tokens": 0, "completed": 0}
    text = render_metrics("sim-model", "engine-0", snapshot)
    assert "sglang:num_queue_reqs" in text
    assert parse_engine_load(text, 1.0) == EngineLoad(running=3, waiting=9, kv_usage=0.25, sampled_at=1.0)


SGLANG_TWO_RANKS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",engine_type="unified",model_name="m",tp_rank="0"} 4.0
sglang:num_running_reqs{dp_rank="1",engine_type="unified",model_name="m",tp_rank="0"} 2.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{dp_rank="0",engine_type="unified",model_name="m",tp_rank="0"} 5.0
sglang:num_queue_reqs{dp_rank="1",engine_type="unified",model_name="m",tp_rank="0"} 1.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{dp_rank="0",engine_type="unified",model_name="m",tp_rank="0"} 0.75
sglang:token_usage{dp_rank="1",engine_type="unified",model_name="m",tp_rank="0"} 0.5
sglang:num_running_reqs_extra{dp_rank="0"} 100.0
"""


def test_sglang_counts_sum_over_ranks_and_usage_is_the_fullest_rank():
    load = parse_engine_load(SGLANG_TWO_RANKS, 0.0)
    assert (load.running, load.waiting, load.kv_usage) == (6, 6, 0.75)


def test_older_vllm_names_and_odd_label_values():
    text = (
        'vllm:num_requests_running{model_name="a b}c",engine="0"} 2.0 1700000000000\n'
        'vllm:num_requests_waiting{model_name="a b}c",engine="0"} 1\n'
        'vllm:gpu_cache_usage_perc{model_name="a b}c",engine="0"} 0.5\n'
        "vllm:num_requests_waiting NaN\n"
    )
    assert parse_engine_load(text, 0.0) == EngineLoad(running=2, waiting=1, kv_usage=0.5, sampled_at=0.0)


@pytest.mark.parametrize("text", ["", "# nothing here\nprocess_cpu_seconds_total 3.0\n", "<html>not metrics</html>"])
def test_text_without_engine_numbers_is_a_clear_error(text):
    with pytest.raises(EngineMetricsError, match="vLLM or SGLang"):
        parse_engine_load(text, 0.0)
