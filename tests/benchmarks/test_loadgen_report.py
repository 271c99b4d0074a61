"""The load generator against a simulated fleet, and the report's numbers."""

from __future__ import annotations

import math

from benchmarks.loadgen import percentile, run_trace, summarize
from benchmarks.report import format_table, markdown_table
from benchmarks.router_overhead import parse_wrk
from benchmarks.workloads import generated_shared_prefix, multi_turn_chat
from engine_sim.config import EngineConfig, FaultConfig, WorkerSpec
from engine_sim.fleet import Fleet


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert math.isnan(percentile([], 50))


async def test_trace_runs_against_a_fleet_and_measures_every_request():
    fleet = Fleet([WorkerSpec()], EngineConfig(time_scale=0.1))
    await fleet.start()
    try:
        for workload in (
            generated_shared_prefix(num_groups=2, prompts_per_group=3, system_prompt_len=40, question_len=5, output_len=7, rate=50),
            multi_turn_chat(num_sessions=2, turns=2, system_prompt_len=30, user_len=5, output_len=7, session_rate=20, think_time_s=0.05),
        ):
            results, wall = await run_trace(fleet.workers[0].url, workload)
            assert [r.ok for r in results] == [True] * len(workload.requests)
            assert all(r.output_tokens == 7 and 0 < r.ttft_s <= r.e2e_s for r in results)
            summary = summarize(results, wall)
            assert summary["completed"] == len(workload.requests) and summary["failed"] == 0
            assert summary["ttft_ms"]["p50"] <= summary["ttft_ms"]["p99"]
    finally:
        await fleet.stop()


async def test_failed_requests_are_recorded_not_dropped():
    fleet = Fleet([WorkerSpec(faults=FaultConfig(error_rate=1.0, error_status=503))], EngineConfig(time_scale=0.1))
    await fleet.start()
    try:
        workload = generated_shared_prefix(num_groups=1, prompts_per_group=3, system_prompt_len=10, question_len=2, rate=100)
        results, wall = await run_trace(fleet.workers[0].url, workload)
        summary = summarize(results, wall)
        assert summary["failed"] == 3 and summary["completed"] == 0
        assert sum(summary["errors"].values()) == 3 and all(k.startswith("503") for k in summary["errors"])
    finally:
        await fleet.stop()


def _run(router: str, ttft_p50: float, hit: float) -> dict:
    ms = {"p50": ttft_p50, "p90": ttft_p50 * 2, "p99": ttft_p50 * 3}
    summary = {"requests": 4, "completed": 4, "ttft_ms": ms, "e2e_ms": ms, "throughput_rps": 2.0, "output_tok_per_s": 100.0}
    return {"router": router, "summary": summary, "fleet": {"cache_hit_rate": hit}}


def test_table_shows_ratios_to_the_baseline_and_skips():
    runs = [_run("sglang-router:cache_aware", 10.0, 0.5), _run("atom:cache_aware", 5.0, 0.75), {"router": "x:y", "skipped": "not installed"}]
    table = format_table("shared-prefix", runs)
    atom_line = next(line for line in table.splitlines() if line.startswith("atom:cache_aware"))
    assert "0.50x, 0.50x, 0.50x, 1.00x, 1.50x" in atom_line
    assert "x:y" in table and "not installed" in table
    md = markdown_table(runs).splitlines()
    assert md[0].startswith("| router |") and len(md) == 5
    assert md[3].startswith("| atom:cache_aware | 5 |") and "| 75% | 0.50x / 0.50x | 0.50x |" in md[3]


def test_parse_wrk_output():
    sample = """Running 3s test @ http://127.0.0.1:1/v1/completions
  1 threads and 32 connections
  Latency Distribution
     50%    2.76ms
     75%    4.00ms
     90%    9.00ms
     99%   14.41ms
  33408 requests in 3.00s, 12.3MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  11136.12
"""
    parsed = parse_wrk(sample)
    assert parsed == {"rps": 11136.12, "p50_ms": 2.76, "p99_ms": 14.41, "errors": 7, "timeouts": 1}
    assert parse_wrk(sample.replace("2.76ms", "900us"))["p50_ms"] == 0.9
