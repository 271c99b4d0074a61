"""The capacity benchmark's pure parts: wrk parsing, peer ratios, stream outcomes, the backends' bodies."""

from __future__ import annotations

import json
import math
import time

import pytest

from benchmarks.capacity_bodies import PREFILL_BODY, SSE_DONE, SSE_EVENTS, chat_request, sse_event_bodies
from benchmarks.processes import StaticUpstreams, parse_router
from benchmarks.router_overhead import _nginx_answer, parse_wrk, with_peer_ratios
from benchmarks.stream_load import StreamOutcome, report_row, summarize

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 4 connections
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    2.00ms
     99%    1.20s
  1000 requests in 1.00s, 1.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:   1000.50
"""


def test_parse_wrk_reads_rate_latencies_errors_and_timeouts_apart():
    row = parse_wrk(WRK_OUTPUT)
    assert row == {"rps": 1000.5, "p50_ms": pytest.approx(0.812), "p99_ms": 1200.0, "errors": 11, "timeouts": 4, "requests": 1000}


def test_parse_wrk_rejects_output_without_a_rate():
    with pytest.raises(ValueError, match="could not parse"):
        parse_wrk("wrk: connection refused")


def test_ratios_are_against_the_best_peer_per_metric_not_direct():
    rows = with_peer_ratios(
        [
            {"target": "direct (nginx)", "rps": 50000.0, "p50_ms": 0.1, "p99_ms": 1.0},
            {"target": "atom:round_robin", "rps": 1000.0, "p50_ms": 20.0, "p99_ms": 40.0},
            {"target": "smg:round_robin", "rps": 4000.0, "p50_ms": 8.0, "p99_ms": 30.0},
            {"target": "vllm-router:round_robin", "rps": 2000.0, "p50_ms": 10.0, "p99_ms": 20.0},
            {"target": "sglang-router:round_robin", "skipped": "not installed"},
        ]
    )
    atom = rows[1]
    assert atom["rps_vs_best_peer"] == 0.25 and atom["p50_vs_best_peer"] == 2.5 and atom["p99_vs_best_peer"] == 2.0
    assert rows[2]["rps_vs_best_peer"] == 1.0 and rows[3]["p99_vs_best_peer"] == 1.0
    assert "rps_vs_best_peer" not in rows[4]


def test_ratios_are_nan_when_no_peer_ran():
    rows = with_peer_ratios([{"target": "atom:round_robin", "rps": 1000.0, "p50_ms": 20.0, "p99_ms": 40.0}])
    assert math.isnan(rows[0]["rps_vs_best_peer"]) and math.isnan(rows[0]["p99_vs_best_peer"])


def test_stream_summary_counts_timeouts_apart_from_errors_and_times_only_completed_streams():
    outcomes = [StreamOutcome(True, False, 2.0), StreamOutcome(True, False, 4.0)]
    outcomes += [StreamOutcome(False, True, 60.0, "timeout"), StreamOutcome(False, False, 0.1, "status 503")]
    row = report_row(summarize(outcomes, wall_s=4.0))
    assert row["requests"] == 4 and row["completed"] == 2 and row["timeouts"] == 1 and row["errors"] == 1
    assert row["error_kinds"] == {"status 503": 1}
    assert row["p50_ms"] == 3000.0 and row["rps"] == 0.5


def test_sse_answer_is_token_events_with_one_finish_then_done():
    events = sse_event_bodies(SSE_EVENTS)
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events]
    assert len(chunks) == 64 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("length") == 1
    assert SSE_DONE == b"data: [DONE]\n\n"
    assert json.loads(chat_request(stream=True))["stream"] is True


def test_prefill_body_carries_kv_transfer_params_for_the_decode_leg():
    assert json.loads(PREFILL_BODY)["kv_transfer_params"]["do_remote_prefill"] is True


def test_nginx_answer_sets_each_distinct_part_once():
    text = _nginx_answer([b"a'b", b"a'b", b"c"])
    assert text.count("set $part0 'a\\'b';") == 1 and text.count("set $part1 'c';") == 1
    assert text.endswith('return 200 "$part0$part0$part1";')


@pytest.mark.parametrize(
    ("label", "flags"),
    [
        ("atom:round_robin", ["--pd-disaggregation", "--backend", "vllm"]),
        ("smg:round_robin", ["--pd-disaggregation"]),
        ("sglang-router:round_robin", ["--pd-disaggregation"]),
        ("vllm-router:round_robin", ["--vllm-pd-disaggregation"]),
    ],
)
def test_each_router_runs_static_pd_backends_in_its_own_protocol(label: str, flags: list[str]):
    router = parse_router(label)
    upstreams = StaticUpstreams(pd_protocol=router.native_pd_protocol, prefill=["http://p:1"], decode=["http://d:2"])
    cmd = router.command(9000, upstreams, 9001)
    start = cmd.index("--pd-disaggregation" if "--pd-disaggregation" in cmd else "--vllm-pd-disaggregation")
    assert cmd[start : start + len(flags)] == flags
    assert cmd[cmd.index("--prefill") + 1] == "http://p:1" and cmd[cmd.index("--decode") + 1] == "http://d:2"
    if router.kind != "atom":
        assert cmd[cmd.index("--prometheus-port") + 1] == "9001"


def test_our_router_from_another_checkout_is_labelled_by_it_and_not_a_peer(tmp_path):
    (tmp_path / "before" / "router").mkdir(parents=True)
    (tmp_path / "before" / "router" / "__main__.py").write_text("")
    router = parse_router(f"atom@{tmp_path / 'before'}:round_robin")
    assert router.kind == "atom" and router.source == tmp_path / "before" and router.label == "atom@before:round_robin"
    assert router.unavailable_reason() is None
    assert parse_router(f"atom@{tmp_path / 'missing'}:round_robin").unavailable_reason() is not None
    rows = with_peer_ratios(
        [
            {"target": "atom@before:round_robin", "rps": 9000.0, "p50_ms": 1.0, "p99_ms": 2.0},
            {"target": "smg:round_robin", "rps": 4000.0, "p50_ms": 8.0, "p99_ms": 30.0},
        ]
    )
    assert rows[0]["rps_vs_best_peer"] == 2.25  # measured against smg, not against itself
    with pytest.raises(ValueError, match="only our router"):
        parse_router("smg@/x:round_robin")


def test_cpu_seconds_counts_a_process_and_its_children() -> None:
    """The CPU column reads /proc: a child that burns CPU shows in its parent's tree."""
    import os
    import signal
    import subprocess
    import sys

    from benchmarks.router_overhead import cpu_seconds

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(parent.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds(parent.pid) >= 0.3
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too: nothing outlives the test
        parent.wait()
