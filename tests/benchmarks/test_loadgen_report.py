"""The load generator against a simulated fleet, and the report's numbers."""

from __future__ import annotations

import math

from benchmarks.loadgen import RequestResult, percentile, route_of, run_trace, summarize, summarize_by
from benchmarks.report import format_modes_table, format_table, markdown_modes_table, markdown_table, ratios_to_best
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
            generated_shared_prefix(
                num_groups=2, prompts_per_group=3, system_prompt_len=40, question_len=5, output_len=7, rate=50
            ),
            multi_turn_chat(
                num_sessions=2, turns=2, system_prompt_len=30, user_len=5, output_len=7, session_rate=20, think_time_s=0.05
            ),
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
    runs = [
        _run("sglang-router:cache_aware", 10.0, 0.5),
        _run("atom:cache_aware", 5.0, 0.75),
        {"router": "x:y", "skipped": "not installed"},
    ]
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
    assert parsed == {"rps": 11136.12, "p50_ms": 2.76, "p99_ms": 14.41, "errors": 7, "timeouts": 1, "requests": 33408}
    assert parse_wrk(sample.replace("2.76ms", "900us"))["p50_ms"] == 0.9


def test_route_of_reads_the_routers_worker_headers():
    assert route_of({"x-atom-prefill-worker": "http://p", "x-atom-decode-worker": "http://d"}) == "pair"
    assert route_of({"x-atom-decode-worker": "http://d"}) == "decode_only"
    assert route_of({"x-atom-worker": "http://w"}) == "single"
    assert route_of({"content-type": "text/event-stream"}) == ""


def test_summary_counts_routes_and_the_decode_only_share_of_answered_requests():
    def result(group: str, route: str, ok: bool = True) -> RequestResult:
        return RequestResult(group, ok, 200 if ok else 502, 0.01 if ok else None, 0.1, 4 if ok else 0, "" if ok else "x", route)

    results = [
        result("short-0", "decode_only"),
        result("short-1", "decode_only"),
        result("rag-0", "pair"),
        result("rag-1", "pair", ok=False),
    ]
    summary = summarize(results, 1.0)
    assert summary["routes"] == {"decode_only": 2, "pair": 1}  # failed requests count in neither
    assert summary["decode_only_share"] == 2 / 3
    by_kind = summarize_by(results, 1.0, lambda g: g.split("-")[0])
    assert list(by_kind) == ["rag", "short"]
    assert by_kind["short"]["decode_only_share"] == 1.0 and by_kind["rag"]["decode_only_share"] == 0.0
    assert math.isnan(summarize([result("g0", "single")], 1.0)["decode_only_share"])  # co-located: no P/D route


def _mode_run(label: str, ttft_p50: float, ttft_p90: float, e2e_p50: float, rps: float, share: float) -> dict:
    summary = {
        "requests": 10,
        "completed": 10,
        "ttft_ms": {"p50": ttft_p50, "p90": ttft_p90, "p99": ttft_p90},
        "e2e_ms": {"p50": e2e_p50, "p90": e2e_p50, "p99": e2e_p50},
        "throughput_rps": rps,
        "output_tok_per_s": rps * 10,
        "decode_only_share": share,
    }
    return {"router": label, "summary": summary, "fleet": {"cache_hit_rate": 0.5}}


def test_modes_table_gives_each_run_as_a_ratio_to_the_best_of_them():
    runs = [
        _mode_run("atom:cache_aware always-pair", 40.0, 100.0, 500.0, 7.5, 0.0),
        _mode_run("atom:cache_aware conditional", 20.0, 120.0, 400.0, 8.0, 0.75),
        _mode_run("atom:cache_aware co-located", 30.0, 80.0, 450.0, 6.0, math.nan),
        {"router": "sglang-router:cache_aware always-pair", "skipped": "the disaggregation modes are flags of our router"},
    ]
    ratios = ratios_to_best(runs)
    assert ratios["atom:cache_aware conditional"] == {"TTFT p50": 1.0, "TTFT p90": 1.5, "E2E p50": 1.0, "req/s": 1.0}
    assert ratios["atom:cache_aware always-pair"]["TTFT p50"] == 2.0 and ratios["atom:cache_aware co-located"]["req/s"] == 0.75
    table = format_modes_table("mixed", runs)
    line = next(row for row in table.splitlines() if row.startswith("atom:cache_aware conditional"))
    assert "75%" in line and line.endswith("1.00x, 1.50x, 1.00x, 1.00x")
    assert "flags of our router" in table
    md = markdown_modes_table(runs).splitlines()
    assert len(md) == 2 + len(runs) and md[2].count("|") == md[0].count("|")
    assert "| 0% | 2.00x | 1.25x | 1.25x | 0.94x |" in md[2]


def test_disagg_modes_flag_means_all_three_ways_on_the_mixed_trace():
    from benchmarks.compare_routers import DEFAULT_WORKLOADS, build_parser, options_from_args

    opts = options_from_args(build_parser().parse_args(["--routers", "atom:cache_aware", "--disagg-modes"]))
    assert opts.disagg_modes == ["always-pair", "conditional", "co-located"] and opts.workloads == ["mixed"]
    opts = options_from_args(
        build_parser().parse_args(["--disagg-modes", "conditional", "--conditional-args", "--disagg-max-prefill-queue 2"])
    )
    assert opts.disagg_modes == ["conditional"] and opts.conditional_args == ["--disagg-max-prefill-queue", "2"]
    opts = options_from_args(build_parser().parse_args([]))
    assert opts.disagg_modes == [] and opts.workloads == list(DEFAULT_WORKLOADS)
