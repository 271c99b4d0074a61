"""Router replicas: do N routers behind a round-robin balancer place prefixes as well as one?

    python -m benchmarks.replicas                                   # every policy, both workloads
    python -m benchmarks.replicas --policies kv_aware cache_aware --scale 0.5

Each run starts a fresh simulated fleet (publishing KV events when the policy reads them)
and one router, or N replicas of it (`--replicas`, default 2), optionally sharing state
through a fresh throwaway redis-server (`--redis-url`); the load generator sends the trace
round-robin across the replicas. Hit rate is the fleet's own count (cached / prompt tokens,
`/sim/stats`). Prints one dated table, policy x workload x setup, with each replica setup's
difference from one router in points, and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.compare_routers import RESULTS_DIR, Options, build_workload
from benchmarks.loadgen import run_trace, summarize
from benchmarks.processes import RouterUnderTest, SimFleetProcess
from benchmarks.report import machine_info, write_json
from benchmarks.workloads import Workload
from testbed.processes import EngineStartError, ManagedProcess
from testbed.redis_server import RedisServer, start_redis

WORKLOADS = ("shared-prefix", "kv-pressure")
# Policies whose placement depends on what other replicas did: prefixes (kv_aware from
# engine events, cache_aware from its own tree) or load.
DEFAULT_POLICIES = ("kv_aware", "cache_aware", "least_load", "power_of_two")
# Only cache_aware keeps state Redis can share; the others gain nothing from it.
SYNCED_POLICIES = ("cache_aware",)


@dataclass(frozen=True)
class Setup:
    """How many routers serve the trace, and whether they share state through Redis."""

    replicas: int
    redis: bool = False

    @property
    def label(self) -> str:
        if self.replicas == 1:
            return "1 router"
        return f"{self.replicas} replicas" + (" + redis" if self.redis else "")


def setups_for(policy: str, replicas: int) -> list[Setup]:
    """One router (the baseline), N replicas, and N replicas with Redis where it shares something."""
    setups = [Setup(1), Setup(replicas)]
    if policy in SYNCED_POLICIES:
        setups.append(Setup(replicas, redis=True))
    return setups


def run_setup(policy: str, workload: Workload, setup: Setup, opts: Options) -> dict[str, Any]:
    """`workload` through `setup` in front of a fresh fleet; stops everything it started."""
    router = RouterUnderTest("atom", policy)
    sim_args = [*opts.sim_args, "--kv-events"] if router.reads_kv_events else list(opts.sim_args)
    fleet = SimFleetProcess(opts.workers, sim_args)
    redis: RedisServer | None = None
    procs: list[ManagedProcess] = []
    try:
        if setup.redis:
            redis = start_redis()
            router = RouterUnderTest("atom", policy, extra_args=("--redis-url", redis.url))
        procs = [router.start(fleet) for _ in range(setup.replicas)]
        results, wall = asyncio.run(run_trace([p.url for p in procs], workload))
        totals = fleet.stats()["totals"]
    finally:
        for proc in procs:
            proc.stop(grace=5.0)
        if redis is not None:
            redis.stop()
        fleet.stop()
    return {
        "policy": policy,
        "workload": workload.name,
        "setup": setup.label,
        "replicas": setup.replicas,
        "redis": setup.redis,
        "summary": summarize(results, wall),
        "fleet": {k: totals[k] for k in ("completed", "prompt_tokens", "cached_tokens", "evicted_blocks", "cache_hit_rate")},
    }


def difference_points(run: dict[str, Any], baseline: dict[str, Any]) -> float:
    """`run`'s hit rate minus the one-router baseline's, in percentage points."""
    return 100.0 * (run["fleet"]["cache_hit_rate"] - baseline["fleet"]["cache_hit_rate"])


def format_replica_table(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """One table: policy x workload x setup, hit rate and its difference from one router."""
    load = ", ".join(f"{x:.2f}" for x in meta["load_average"])
    lines = [
        f"router replicas, {meta['date_utc']} UTC, {meta['cpus']} CPUs, load average {load}",
        f"{'policy':<14}{'workload':<15}{'setup':<20}{'hit rate':>9}{'vs 1 router':>13}{'TTFT p50':>10}{'failed':>8}",
    ]
    baselines = {(r["policy"], r["workload"]): r for r in runs if r["replicas"] == 1}
    for r in runs:
        base = baselines.get((r["policy"], r["workload"]))
        diff = "-" if base is None or base is r else f"{difference_points(r, base):+.1f} pt"
        lines.append(
            f"{r['policy']:<14}{r['workload']:<15}{r['setup']:<20}{100 * r['fleet']['cache_hit_rate']:>8.1f}%"
            f"{diff:>13}{r['summary']['ttft_ms']['p50']:>8.0f}ms{r['summary']['failed']:>8}"
        )
    return "\n".join(lines)


def _run_with_one_retry(policy: str, workload: Workload, setup: Setup, opts: Options, echo: bool) -> dict[str, Any]:
    """`run_setup`, started over once if a process fails to start (on a shared machine a
    free port can be taken by someone else before our server binds it)."""
    try:
        return run_setup(policy, workload, setup, opts)
    except EngineStartError as exc:
        if echo:
            print(f"  start-up failed ({str(exc).splitlines()[0]}); once more", flush=True)
        return run_setup(policy, workload, setup, opts)


def run_replicas(opts: Options, policies: Sequence[str], replicas: int, echo: bool = True) -> dict[str, Any]:
    runs = []
    for name in opts.workloads:
        workload = build_workload(name, opts)
        for policy in policies:
            for setup in setups_for(policy, replicas):
                if echo:
                    print(f"[{name}] {policy} {setup.label} ({len(workload.requests)} requests) ...", flush=True)
                runs.append(_run_with_one_retry(policy, workload, setup, opts, echo))
    meta = {
        **machine_info(),
        "workers": opts.workers,
        "sim_args": opts.sim_args,
        "rate": opts.rate,
        "scale": opts.scale,
        "seed": opts.seed,
        "replicas": replicas,
    }
    meta["load_average"] = os.getloadavg()  # at the end: what the runs shared the machine with
    return {"meta": meta, "runs": runs}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="*", default=list(DEFAULT_POLICIES), help="atom router policies to compare.")
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--replicas", type=int, default=2, help="Router replicas behind the round-robin client.")
    p.add_argument("--workers", type=int, default=4, help="Simulated workers in the fleet.")
    p.add_argument("--rate", type=float, default=8.0, help="Poisson arrival rate (requests/s).")
    p.add_argument("--scale", type=float, default=1.0, help="Multiply request counts (e.g. 0.25 for a quick look).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sim-args", default="--num-blocks 512", help="Extra engine_sim flags, one string.")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.replicas < 2:
        raise SystemExit("benchmarks.replicas: --replicas must be 2 or more (one router is always the baseline)")
    opts = Options(
        routers=[],
        workloads=args.workloads,
        workers=args.workers,
        sim_args=shlex.split(args.sim_args),
        rate=args.rate,
        scale=args.scale,
        seed=args.seed,
        out_dir=args.out_dir,
        plot=False,
    )
    result = run_replicas(opts, args.policies, args.replicas)
    print(format_replica_table(result["runs"], result["meta"]))
    stem = "replicas-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    print(f"results: {write_json(result, opts.out_dir, stem)}")


if __name__ == "__main__":
    main()
