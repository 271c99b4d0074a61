"""The pair vs decode-only sweep: its analysis (pure) and one small run against a simulated fleet."""

from __future__ import annotations

from benchmarks.disagg_crossover import Background, Probe, crossover, format_rows, markdown_rows, summarize_sweep, sweep
from engine_sim.config import EngineConfig, WorkerSpec
from engine_sim.fleet import Fleet


def test_longest_pause_only_counts_gaps_that_overlap_the_window():
    bg = Background([[0.0, 0.01, 0.02, 0.10, 0.11], [0.0, 0.5]])
    assert bg.longest_pause(0.03, 0.05) == 0.5  # the second stream paused across the whole window
    assert Background([[0.0, 0.01, 0.02, 0.10, 0.11]]).longest_pause(0.03, 0.05) == 0.08
    assert Background([[0.0, 0.01, 0.02]]).longest_pause(0.5, 0.6) == 0.0


def _probes(length: int, pair_ttft: float, local_ttft: float, start: float) -> list[Probe]:
    return [
        Probe(length, "pair", start, pair_ttft, pair_ttft + 0.1),
        Probe(length, "decode_only", start + 1, local_ttft, local_ttft + 0.1),
    ]


def test_a_pair_pays_once_the_local_prefill_stalls_decodes_longer_than_the_pair_delays_the_probe():
    # Background stream: a token every 10 ms, but none from 3.00 s to 3.06 s, while the long
    # decode-only probe (sent at 3.0 s) prefilled; the others ran at 0.2, 1.2 and 2.0 s.
    stamps = [ms / 1000 for ms in range(0, 4000, 10) if not 3000 < ms < 3060]
    probes = _probes(32, 0.025, 0.012, 0.2) + _probes(2048, 0.12, 0.095, 2.0)
    rows = summarize_sweep(probes, Background([stamps]))
    short, long = rows
    assert short["uncached_tokens"] == 32 and not short["pair_pays"]
    assert abs(short["pair_extra_ttft_ms"] - 13.0) < 1e-6
    assert abs(long["decode_only_stall_ms"] - 60.0) < 1e-6 and abs(long["pair_stall_ms"] - 10.0) < 1e-6
    assert long["pair_pays"]  # 50 ms more stall than a pair's 25 ms extra TTFT
    assert crossover(rows) == 2048
    assert crossover(rows[:1]) is None
    assert "2048" in format_rows(rows) and markdown_rows(rows).count("\n") == 3
    assert all(r["queued_prefills"] == 0 for r in rows)


async def test_sweep_probes_both_ways_over_a_busy_decode_worker():
    fleet = Fleet([WorkerSpec(role="prefill"), WorkerSpec(role="decode")], EngineConfig(time_scale=0.1))
    await fleet.start()
    try:
        p, d = fleet.workers
        probes, bg = await sweep(p.url, d.url, [8, 200], probes=2, background=3, background_output=64, probe_output=4)
        assert sorted((x.length, x.way) for x in probes) == sorted(
            [(n, w) for n in (8, 200) for w in ("pair", "decode_only")] * 2
        )
        assert all(0 < x.ttft_s <= x.e2e_s for x in probes)
        assert p.snapshot()["prefill_legs"] == 4 and d.snapshot()["decode_legs"] == 4
        assert d.snapshot()["decode_only"] == 4 + len(bg.stamps)  # the probes and every background stream
        assert len(bg.stamps) >= 3 and all(bg.stamps[:3])
    finally:
        await fleet.stop()
