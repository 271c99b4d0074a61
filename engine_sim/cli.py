"""`atom-engine-sim` / `python -m engine_sim`: serve a simulated fleet until SIGINT/SIGTERM.

Workers are numbered regular first, then prefill, then decode; `--ports` (and
`--bootstrap-ports` for prefill workers) follow that order, 0 or absent meaning a free
port. When every worker listens, the fleet's description (URLs, roles, engine ids,
bootstrap ports) is printed as one `READY {json}` line and written to `--fleet-file`.

Every timing/cache constant of `EngineConfig` and every fault knob of `FaultConfig` is a
flag named after its field (`--prefill-us-per-token`, `--error-rate` ...), generated from
the dataclasses so flags and settings cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from engine_sim.config import PROTOCOLS, EngineConfig, FaultConfig, WorkerSpec

_FIELD_HELP = {
    "step_overhead_ms": "Fixed cost of every forward pass (weights read once).",
    "prefill_us_per_token": "Compute cost per uncached prompt token.",
    "decode_us_per_seq": "Cost per sequence in a decode batch.",
    "decode_us_per_context_token": "KV read cost per context token of each decoding sequence.",
    "kv_transfer_base_ms": "Fixed cost of one P/D KV transfer.",
    "kv_transfer_us_per_token": "P/D transfer cost per uncached prompt token.",
    "max_num_seqs": "Most sequences in one batch.",
    "max_num_batched_tokens": "Token budget of one step (chunked prefill).",
    "block_size": "Tokens per KV block.",
    "num_blocks": "KV blocks per worker (capacity = num_blocks * block_size tokens).",
    "max_model_len": "Longest prompt + output accepted.",
    "time_scale": "Multiplies every simulated duration (0.1 = ten times faster).",
    "kv_wait_timeout_s": "How long a decode leg waits for its prefill's KV.",
    "error_rate": "Fraction of requests answered with --error-status.",
    "error_status": "HTTP status of injected errors.",
    "spike_rate": "Fraction of requests delayed by --spike-ms.",
    "spike_ms": "Latency spike length.",
    "hang_rate": "Fraction of requests accepted and never answered.",
    "die_after_tokens": "Close the connection after this many tokens.",
    "unhealthy": "GET /health answers 503.",
    "listening": "Whether workers accept connections (false: start crashed).",
    "paused": "The engine runs no steps: requests queue as waiting until unpaused.",
}


def _add_dataclass_flags(group: argparse._ArgumentGroup, cls: type, defaults: Any) -> None:
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{_FIELD_HELP.get(f.name, '')} Default: {default}."
        if isinstance(default, bool):
            group.add_argument(flag, type=_parse_bool, default=default, metavar="BOOL", help=help_)
        elif default is None:
            group.add_argument(flag, type=int, default=None, help=help_)
        else:
            group.add_argument(flag, type=type(default), default=default, help=help_)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atom-engine-sim", description="Serve a fleet of simulated OpenAI-compatible LLM engines.")
    g = p.add_argument_group("Fleet")
    g.add_argument("--regular", type=int, default=0, help="Number of co-located (regular) workers.")
    g.add_argument("--prefill", type=int, default=0, help="Number of prefill workers.")
    g.add_argument("--decode", type=int, default=0, help="Number of decode workers.")
    g.add_argument("--protocol", choices=PROTOCOLS, default="vllm", help="P/D protocol of prefill/decode workers.")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--ports", type=int, nargs="*", default=[], help="Worker ports in order regular, prefill, decode (0: free).")
    g.add_argument("--bootstrap-ports", type=int, nargs="*", default=[], help="Bootstrap ports of prefill workers (0: free).")
    g.add_argument("--admin-port", type=int, default=None, help="Fleet admin API port (0: free; absent: none).")
    g.add_argument("--model", default="sim-model", help="Model name the workers serve.")
    g.add_argument("--seed", type=int, default=0, help="Seed of the fault draws.")
    g.add_argument("--fleet-file", default=None, help="Write the fleet description (JSON) here once ready.")
    g.add_argument(
        "--kv-events",
        action="store_true",
        help="Publish vLLM-format KV cache events over ZMQ (endpoints in the fleet description; needs pyzmq, msgspec).",
    )
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    _add_dataclass_flags(p.add_argument_group("Timing and KV cache model"), EngineConfig, EngineConfig())
    _add_dataclass_flags(
        p.add_argument_group("Faults (every worker; change per worker with POST /sim/faults)"), FaultConfig, FaultConfig()
    )
    p.add_argument_group("Faults").add_argument(
        "--worker-faults", default=None, metavar="JSON", help='Per-worker overrides, e.g. \'{"1": {"error_rate": 0.5}}\'.'
    )
    return p


def specs_from_args(args: argparse.Namespace) -> list[WorkerSpec]:
    roles = ["regular"] * args.regular + ["prefill"] * args.prefill + ["decode"] * args.decode
    if not roles:
        raise SystemExit("atom-engine-sim: no workers; pass --regular N and/or --prefill N --decode N")
    if len(args.ports) > len(roles):
        raise SystemExit(f"atom-engine-sim: {len(args.ports)} --ports for {len(roles)} workers")
    if len(args.bootstrap_ports) > args.prefill:
        raise SystemExit(f"atom-engine-sim: {len(args.bootstrap_ports)} --bootstrap-ports for {args.prefill} prefill workers")
    base_faults = FaultConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FaultConfig)})
    overrides: dict[str, Any] = {}
    if args.worker_faults:
        try:
            overrides = json.loads(args.worker_faults)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"atom-engine-sim: --worker-faults is not JSON: {exc}") from None
    specs = []
    prefill_seen = 0
    for i, role in enumerate(roles):
        bootstrap = None
        if role == "prefill":
            if prefill_seen < len(args.bootstrap_ports):
                bootstrap = args.bootstrap_ports[prefill_seen]
            prefill_seen += 1
        try:
            faults = base_faults.updated(overrides.get(str(i), {}))
            specs.append(
                WorkerSpec(
                    port=args.ports[i] if i < len(args.ports) else 0,
                    role=role,
                    protocol=args.protocol,
                    bootstrap_port=bootstrap,
                    faults=faults,
                )
            )
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"atom-engine-sim: worker {i}: {exc}") from None
    return specs


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    try:
        return EngineConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig)})
    except ValueError as exc:
        raise SystemExit(f"atom-engine-sim: {exc}") from None


def _write_atomically(path: str, text: str) -> None:
    """Write `path` so that a reader sees the whole file or none (the harness polls for it)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    from engine_sim.fleet import Fleet

    fleet = Fleet(
        specs_from_args(args),
        engine_config_from_args(args),
        model=args.model,
        host=args.host,
        admin_port=args.admin_port,
        seed=args.seed,
        kv_events=args.kv_events,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    try:
        description = fleet.describe()
        # Listeners that start crashed (--listening false) come up closed.
        for worker in fleet.workers:
            if not worker.faults.listening:
                await worker.set_listening(False)
        if args.fleet_file:
            await asyncio.to_thread(_write_atomically, args.fleet_file, json.dumps(description, indent=2))
        print("READY " + json.dumps(description), flush=True)
        await stop.wait()
    finally:
        await fleet.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args))
    sys.exit(0)
