"""The benchmark harness end to end on a tiny trace: real router processes, a real simulated fleet.

Benchmarks are not timed tests: this only proves that every router under test carried the
whole trace to the fleet and that the report files are written.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.compare_routers import Options, run_comparison, run_one
from benchmarks.processes import parse_router
from benchmarks.report import plot_ttft, write_json
from benchmarks.workloads import generated_shared_prefix

pytestmark = pytest.mark.slow

ROUTERS = [
    "atom:round_robin",
    "atom:cache_aware",
    "atom:kv_aware",
    "smg:cache_aware",
    "sglang-router:cache_aware",
    "vllm-router:cache_aware",
]


def test_compare_routers_on_a_tiny_trace(tmp_path: Path):
    routers = [parse_router(r) for r in ROUTERS]
    opts = Options(
        routers=routers,
        workloads=["shared-prefix"],
        workers=2,
        sim_args=["--num-blocks", "512", "--time-scale", "0.1"],
        rate=40.0,
        scale=0.25,  # 2 groups x 4 prompts
        out_dir=tmp_path,
    )
    result = run_comparison(opts, echo=False)
    runs = result["workloads"]["shared-prefix"]["runs"]
    assert [r["router"] for r in runs] == ROUTERS
    for router, run in zip(routers, runs, strict=True):
        if "skipped" in run:
            # Only a peer whose package is not installed may be skipped, and it says why.
            assert router.kind != "atom" and "not installed" in run["skipped"], run
            continue
        assert run["summary"]["completed"] == run["summary"]["requests"] == 8, run
        assert run["fleet"]["received"] == 8 and run["fleet"]["completed"] == 8
        assert run["fleet"]["prompt_tokens"] > 0
    path = write_json(result, tmp_path, "tiny")
    assert json.loads(path.read_text())["meta"]["workers"] == 2
    png = plot_ttft(result, tmp_path, "tiny", ("shared-prefix", "kv-pressure"))
    assert png is not None and png.stat().st_size > 0


@pytest.mark.parametrize(
    ("protocol", "peer"),
    [
        ("sglang", "smg:round_robin"),
        ("sglang", "sglang-router:round_robin"),
        ("vllm", "vllm-router:round_robin"),
        ("vllm-mooncake", "vllm-router:round_robin"),
    ],
)
def test_pd_fleets_through_our_router_and_the_peer_that_speaks_the_protocol(protocol: str, peer: str):
    """Each P/D protocol of the simulator, driven by our router and by an independent router."""
    opts = Options(
        routers=[],
        workloads=[],
        workers=2,
        sim_args=["--time-scale", "0.1"],
        rate=40.0,
        pd_protocol=protocol,
    )
    workload = generated_shared_prefix(
        num_groups=2, prompts_per_group=2, system_prompt_len=40, question_len=5, output_len=6, rate=40.0
    )
    for label in ("atom:round_robin", peer):
        router = parse_router(label)
        if router.kind == "atom":
            # These prompts are short: without it our router would serve them decode-only.
            router = replace(router, extra_args=("--always-pair",))
        run = run_one(router, workload, opts)
        if "skipped" in run:
            assert router.kind != "atom" and "not installed" in run["skipped"], run
            continue
        assert run["summary"]["completed"] == 4, (label, run)
        fleet = run["fleet"]
        assert fleet["prefill_legs"] == fleet["decode_legs"] == 4, (label, fleet)
        assert fleet["rejected"] == fleet["kv_failures"] == 0, (label, fleet)


@pytest.mark.parametrize("pd", [False, True], ids=["co-located", "pd"])
def test_capacity_modes_through_our_router(pd: bool):
    """Every mode for about a second, our router only: each row has every column and no errors."""
    from benchmarks.router_overhead import COLUMNS, MODES, format_rows, measure, tools_missing

    missing = tools_missing()
    if missing:
        pytest.skip(missing)
    results = measure([parse_router("atom:round_robin")], modes=MODES, duration_s=1, connections=4, streams=50, pd=pd)
    assert list(results) == list(MODES)
    for mode, rows in results.items():
        assert [r["target"] for r in rows][1:] == ["atom:round_robin"], rows
        assert rows[0]["target"].startswith("direct"), rows
        for row in rows:
            assert set(COLUMNS) <= set(row), (mode, row)
            assert row["rps"] > 0 and row["errors"] == 0 and row["timeouts"] == 0, (mode, row)
        assert rows[1]["peak_rss_mib"] > 0, rows[1]
        assert rows[0]["peak_rss_mib"] is None  # the backend is no router: no RSS column of its own
        if mode == "streams":
            assert rows[1]["completed"] == rows[1]["requests"] == 50, rows[1]
        assert "atom:round_robin" in format_rows(mode, rows, pd)


def test_disagg_modes_run_one_trace_three_ways_and_count_decode_only_like_the_fleet():
    """always-pair / conditional / co-located on the mixed trace: every request answered, and the
    route the router's headers name agrees with what the simulated workers did."""
    from benchmarks.compare_routers import DISAGG_MODES
    from benchmarks.workloads import mixed, request_kind

    opts = Options(routers=[], workloads=[], workers=4, sim_args=["--time-scale", "0.1"], disagg_modes=list(DISAGG_MODES))
    workload = mixed(rate=30.0, duration_s=2.0, session_turns=2, think_time_s=0.5, seed=2)
    kinds = {request_kind(r.group) for r in workload.requests}
    assert kinds == {"short", "rag", "session"}
    n = len(workload.requests)
    runs = {mode: run_one(parse_router("atom:cache_aware"), workload, opts, DISAGG_MODES[mode]) for mode in DISAGG_MODES}
    for mode, run in runs.items():
        assert run["summary"]["completed"] == n, (mode, run["summary"]["errors"])
        assert run["fleet"]["rejected"] == run["fleet"]["kv_failures"] == 0, (mode, run["fleet"])
    pair, conditional, colocated = runs["always-pair"], runs["conditional"], runs["co-located"]
    assert pair["summary"]["routes"] == {"pair": n} and pair["fleet"]["prefill_legs"] == n and pair["fleet"]["decode_only"] == 0
    assert colocated["summary"]["routes"] == {"single": n} and colocated["fleet"]["prefill_legs"] == 0
    routes = conditional["summary"]["routes"]
    assert routes.get("pair", 0) == conditional["fleet"]["prefill_legs"] == conditional["fleet"]["decode_legs"]
    assert routes.get("decode_only", 0) == conditional["fleet"]["decode_only"]
    # With the default threshold: short chats go decode-only, ~2k-token uncached RAG prompts as pairs.
    assert conditional["by_kind"]["short"]["decode_only_share"] == 1.0
    assert conditional["by_kind"]["rag"]["decode_only_share"] == 0.0
    skipped = run_one(parse_router("vllm-router:cache_aware"), workload, opts, DISAGG_MODES["conditional"])
    assert "flags of our router" in skipped["skipped"]
