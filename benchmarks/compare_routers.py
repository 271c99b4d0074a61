"""Run the same traces through several routers, each in front of an identical fresh simulated fleet.

    python -m benchmarks.compare_routers                      # every workload, every router
    python -m benchmarks.compare_routers --preset quick --workloads shared-prefix

Prints TTFT p50/p90/p99, end-to-end latency, throughput and the fleet's prefix-cache hit
rate per router, each also as a ratio to sglang-router cache_aware; writes JSON and a TTFT
plot under benchmarks/results/. A router whose package is missing is skipped with the reason.

Conditional disaggregation (issue 13) runs one trace three ways on the same four workers:

    python -m benchmarks.compare_routers --disagg-modes --workloads mixed --routers atom:cache_aware

always-pair (2 prefill + 2 decode, every request a pair), conditional (the same P/D fleet,
the router choosing pair or decode-only per request) and co-located (4 regular workers).
Each row is also a ratio to the best of the three, with the share sent decode-only.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.loadgen import run_trace, summarize, summarize_by
from benchmarks.processes import RouterUnderTest, SimFleetProcess, parse_router
from benchmarks.report import format_modes_table, format_table, machine_info, plot_ttft, write_json
from benchmarks.workloads import Workload, generated_shared_prefix, kv_pressure, mixed, multi_turn_chat, request_kind
from router.policies.registry import POLICIES

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKLOADS = ("shared-prefix", "multi-turn", "kv-pressure", "mixed")
# What a plain run covers; `mixed` is for --disagg-modes.
DEFAULT_WORKLOADS = ("shared-prefix", "multi-turn", "kv-pressure")
PEERS = (
    "smg:cache_aware",
    "smg:round_robin",
    "sglang-router:cache_aware",
    "sglang-router:round_robin",
    "vllm-router:cache_aware",
)
PRESETS = {
    "full": tuple(f"atom:{p}" for p in POLICIES) + PEERS,
    "quick": ("atom:round_robin", "atom:cache_aware", "atom:kv_aware") + PEERS,
}


@dataclass
class Options:
    routers: list[RouterUnderTest]
    workloads: list[str]
    workers: int = 4
    # Simulator flags shared by every fleet; KV sized so prefix placement matters.
    sim_args: list[str] = field(default_factory=lambda: ["--num-blocks", "512"])
    rate: float = 8.0
    scale: float = 1.0  # multiplies request counts (0.1 for a smoke run)
    seed: int = 0
    out_dir: Path = RESULTS_DIR
    plot: bool = True
    # None: co-located workers; else half prefill, half decode speaking this P/D protocol.
    pd_protocol: str | None = None
    # Run every router each of these ways (`DISAGG_MODES` names) instead of once.
    disagg_modes: list[str] = field(default_factory=list)
    # More router flags for the conditional mode only (e.g. thresholds under test).
    conditional_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DisaggMode:
    """One way to serve a trace on the same workers: disaggregated (half prefill, half
    decode) with these router flags, or all co-located."""

    name: str
    disaggregated: bool
    router_args: tuple[str, ...] = ()


DISAGG_MODES = {
    "always-pair": DisaggMode("always-pair", True, ("--always-pair",)),
    "conditional": DisaggMode("conditional", True),
    "co-located": DisaggMode("co-located", False),
}
# Protocol of the disaggregated modes when --pd is not given: decode-only needs a decode
# worker that serves plain requests, which vLLM's kv_consumer does (SGLang's does not).
DISAGG_DEFAULT_PROTOCOL = "vllm"


def _sim_setting(sim_args: list[str], flag: str, default: int) -> int:
    if flag in sim_args:
        return int(sim_args[sim_args.index(flag) + 1])
    return default


def build_workload(name: str, opts: Options) -> Workload:
    n = lambda base: max(1, round(base * opts.scale))  # noqa: E731 - a local scaling rule
    if name == "shared-prefix":
        return generated_shared_prefix(num_groups=n(8), prompts_per_group=n(16), rate=opts.rate, seed=opts.seed)
    if name == "mixed":
        return mixed(rate=opts.rate, duration_s=max(2.0, 30.0 * opts.scale), seed=opts.seed)
    if name == "multi-turn":
        return multi_turn_chat(num_sessions=n(16), turns=4, session_rate=opts.rate / 4, seed=opts.seed)
    if name == "kv-pressure":
        blocks = _sim_setting(opts.sim_args, "--num-blocks", 4096)
        block_size = _sim_setting(opts.sim_args, "--block-size", 16)
        return kv_pressure(
            fleet_kv_tokens=opts.workers * blocks * block_size,
            system_prompt_len=2048,
            prompts_per_group=n(12),
            rate=opts.rate,
            seed=opts.seed,
        )
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def run_one(router: RouterUnderTest, workload: Workload, opts: Options, mode: DisaggMode | None = None) -> dict[str, Any]:
    """One router on one workload, in front of a fresh fleet; stops everything it started.

    With `mode`, the fleet's shape and the router's extra flags are the mode's."""
    label, pd_protocol = router.label, opts.pd_protocol
    if mode is not None:
        label = f"{router.label} {mode.name}"
        pd_protocol = (opts.pd_protocol or DISAGG_DEFAULT_PROTOCOL) if mode.disaggregated else None
        if router.kind != "atom":
            return {"router": label, "mode": mode.name, "skipped": "the disaggregation modes are flags of our router"}
        extra = mode.router_args + (tuple(opts.conditional_args) if mode.name == "conditional" else ())
        # Every mode counts prompt tokens exactly, as a deployment that sets --tokenizer-path does.
        router = replace(router, extra_args=router.extra_args + extra, tokenize=True)
    reason = router.unavailable_reason(pd_protocol)
    if reason:
        return {"router": label, "skipped": reason}
    sim_args = [*opts.sim_args, "--kv-events"] if router.reads_kv_events else opts.sim_args
    fleet = SimFleetProcess(opts.workers, sim_args, pd_protocol=pd_protocol)
    try:
        proc = router.start(fleet)
        try:
            results, wall = asyncio.run(run_trace(proc.url, workload))
        finally:
            proc.stop(grace=5.0)
        totals = fleet.stats()["totals"]
    finally:
        fleet.stop()
    fleet_keys = (
        "received", "completed", "cancelled", "rejected", "kv_failures", "prefill_legs", "decode_legs",
        "decode_only", "prompt_tokens", "cached_tokens", "remote_prefill_tokens", "evicted_blocks", "cache_hit_rate",
    )  # fmt: skip
    run: dict[str, Any] = {
        "router": label,
        "summary": summarize(results, wall),
        "fleet": {k: totals[k] for k in fleet_keys},
    }
    if mode is not None:
        run["mode"] = mode.name
    if workload.name == "mixed":
        run["by_kind"] = summarize_by(results, wall, request_kind)
    return run


def run_comparison(opts: Options, echo: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {
        "meta": {
            **machine_info(),
            "workers": opts.workers,
            "pd_protocol": opts.pd_protocol,
            "sim_args": opts.sim_args,
            "rate": opts.rate,
            "scale": opts.scale,
            "seed": opts.seed,
            "disagg_modes": opts.disagg_modes,
            "conditional_args": opts.conditional_args,
        },
        "workloads": {},
    }
    for name in opts.workloads:
        workload = build_workload(name, opts)
        runs = []
        modes: list[DisaggMode | None] = [DISAGG_MODES[m] for m in opts.disagg_modes] or [None]
        for router in opts.routers:
            for mode in modes:
                if echo:
                    how = f" {mode.name}" if mode else ""
                    print(f"[{name}] {router.label}{how} ({len(workload.requests)} requests) ...", flush=True)
                runs.append(run_one(router, workload, opts, mode))
        result["workloads"][name] = {"description": workload.description, "runs": runs}
        if echo:
            table = format_modes_table(name, runs) if opts.disagg_modes else format_table(name, runs)
            print(table + "\n", flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_routers", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--routers", nargs="*", default=None, help="KIND:POLICY entries (kinds: atom, smg, sglang-router, vllm-router)."
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="full", help="Router set when --routers is not given.")
    p.add_argument(
        "--workloads", nargs="*", default=None, choices=WORKLOADS, help="Default: all but mixed (mixed with --disagg-modes)."
    )
    p.add_argument("--workers", type=int, default=4, help="Simulated workers per fleet.")
    p.add_argument("--rate", type=float, default=8.0, help="Poisson arrival rate (requests/s; sessions/s x4 for multi-turn).")
    p.add_argument("--scale", type=float, default=1.0, help="Multiply request counts (e.g. 0.25 for a quick look).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sim-args", default="--num-blocks 512", help="Extra engine_sim flags, one string (e.g. '--time-scale 0.5').")
    p.add_argument(
        "--pd",
        choices=("vllm", "vllm-mooncake", "sglang"),
        default=None,
        help="Disaggregated fleets (half prefill, half decode) speaking this P/D protocol; routers that cannot are skipped.",
    )
    p.add_argument(
        "--disagg-modes",
        nargs="*",
        choices=sorted(DISAGG_MODES),
        default=None,
        help="Run each (atom) router these ways on the same workers; no names: all three (always-pair, conditional, co-located).",
    )
    p.add_argument("--conditional-args", default="", help="More router flags for the conditional mode, one string.")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-plot", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    """The run an argument list asks for; `--disagg-modes` alone means all three, on `mixed`."""
    try:
        routers = [parse_router(r) for r in (args.routers or PRESETS[args.preset])]
    except ValueError as exc:
        raise SystemExit(f"compare_routers: {exc}") from None
    disagg_modes = [] if args.disagg_modes is None else (args.disagg_modes or list(DISAGG_MODES))
    workloads = args.workloads or (["mixed"] if disagg_modes else list(DEFAULT_WORKLOADS))
    return Options(
        routers=routers,
        workloads=workloads,
        workers=args.workers,
        sim_args=shlex.split(args.sim_args),
        rate=args.rate,
        scale=args.scale,
        seed=args.seed,
        out_dir=args.out_dir,
        plot=not args.no_plot,
        pd_protocol=args.pd,
        disagg_modes=disagg_modes,
        conditional_args=shlex.split(args.conditional_args),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    opts = options_from_args(args)
    result = run_comparison(opts)
    kind = "-disagg" if opts.disagg_modes else ("-pd-" + args.pd if args.pd else "")
    stem = f"compare{kind}-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    print(f"results: {write_json(result, opts.out_dir, stem)}")
    if opts.plot:
        png = plot_ttft(result, opts.out_dir, stem, ("shared-prefix", "kv-pressure"))
        if png:
            print(f"plot: {png}")


if __name__ == "__main__":
    main()
