"""Command line: `atom-router` / `python -m router`.

Flag names follow `sglang-router launch` where they overlap so teams can swap it in.
Imports stay light: `--help` must not import the server stack, vllm, sglang or torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from router.config import (
    BACKENDS,
    POLICIES,
    AdmissionConfig,
    CircuitBreakerConfig,
    DisaggConfig,
    HealthCheckConfig,
    PolicyConfig,
    RetryConfig,
    RouterConfig,
    WorkerSpec,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atom-router",
        description="OpenAI-compatible router for co-located and prefill/decode-disaggregated engines.",
    )
    g = p.add_argument_group("Workers")
    g.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    g.add_argument("--port", type=int, default=30000, help="Port to listen on.")
    g.add_argument("--worker-urls", nargs="*", default=[], help="Co-located (regular) worker URLs.")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Engine P/D wire protocol: vllm (serial, NIXL-style kv_transfer_params), "
        "vllm-mooncake (concurrent, vLLM MooncakeConnector), sglang (bootstrap room), "
        "atom (relay), openai (co-located only). Default: sglang with --pd-disaggregation, else openai.",
    )
    g.add_argument("--pd-disaggregation", action="store_true", help="Prefill/decode disaggregated mode.")
    g.add_argument(
        "--prefill",
        nargs="+",
        action="append",
        default=[],
        metavar="URL [BOOTSTRAP_PORT]",
        help="Prefill worker URL and optional bootstrap port ('none' or omitted: none). Repeatable.",
    )
    g.add_argument("--decode", nargs=1, action="append", default=[], metavar="URL", help="Decode worker URL. Repeatable.")
    g.add_argument(
        "--config-file",
        default=None,
        help="JSON file with a 'workers' list (url, role, bootstrap_port, model, labels, kv_events_endpoint).",
    )
    g.add_argument("--worker-startup-timeout-secs", type=float, default=1800)
    g.add_argument("--worker-startup-check-interval", type=float, default=30)

    r = p.add_argument_group("Routing policy")
    r.add_argument("--policy", choices=POLICIES, default="cache_aware")
    r.add_argument("--prefill-policy", choices=POLICIES, default=None)
    r.add_argument("--decode-policy", choices=POLICIES, default=None)
    r.add_argument("--cache-threshold", type=float, default=0.3)
    r.add_argument("--balance-abs-threshold", type=int, default=64)
    r.add_argument("--balance-rel-threshold", type=float, default=1.5)
    r.add_argument("--eviction-interval-secs", type=int, default=60)
    r.add_argument("--max-tree-size", type=int, default=2**26)
    r.add_argument("--session-header", default="x-session-id", help="Header whose value keys session affinity.")
    r.add_argument("--prefix-key-length", type=int, default=256, help="Characters (or tokens) of the routing text that key prefix_hash.")
    r.add_argument("--hash-load-factor", type=float, default=1.25, help="Bounded-load factor for prefix_hash / consistent_hashing.")
    r.add_argument("--max-sessions", type=int, default=2**20, help="Session-affinity entries kept (least recently used dropped).")
    r.add_argument("--tokenizer-path", default=None, help="Tokenizer dir or tokenizer.json for token-level routing keys.")
    r.add_argument(
        "--kv-events-port",
        type=int,
        default=None,
        help="kv_aware: read each worker's KV events (vLLM --kv-events-config, ZMQ) from tcp://<worker host>:PORT "
        "unless the worker names its own kv_events_endpoint (config file / admin API).",
    )
    r.add_argument("--kv-overlap-weight", type=float, default=1.0, help="kv_aware: weight of the cached-prefix score.")
    r.add_argument("--kv-load-weight", type=float, default=0.5, help="kv_aware: weight of the load score.")

    d = p.add_argument_group("Conditional disaggregation (P/D pools)")
    disagg = DisaggConfig()
    d.add_argument(
        "--always-pair",
        action="store_true",
        help="Pair a prefill worker with every request, even where the backend (vllm, vllm-mooncake) "
        "could let the decode worker prefill locally. sglang and atom pools always pair.",
    )
    d.add_argument(
        "--disagg-min-uncached-tokens",
        type=int,
        default=disagg.min_uncached_tokens,
        metavar="N",
        help="Pair only when the decode worker lacks at least N of the prompt's tokens (prompt length "
        "minus its cached prefix); fewer go decode-only.",
    )
    d.add_argument(
        "--disagg-max-prefill-queue",
        type=int,
        default=disagg.max_prefill_queue,
        metavar="N",
        help="Go decode-only when every prefill worker already has N or more requests in flight (0: never).",
    )

    q = p.add_argument_group("Requests, admission and security")
    q.add_argument("--request-timeout-secs", type=float, default=1800)
    q.add_argument("--max-payload-size", type=int, default=512 * 1024 * 1024)
    q.add_argument("--max-concurrent-requests", type=int, default=-1, help="-1: unlimited.")
    q.add_argument("--queue-size", type=int, default=100)
    q.add_argument("--queue-timeout-secs", type=float, default=60)
    q.add_argument("--rate-limit-tokens-per-second", type=float, default=None)
    q.add_argument("--api-key", default=None, help="Bearer key required on inference endpoints.")
    q.add_argument("--admin-api-key", default=None, help="Bearer key required on /workers* (default: --api-key).")
    q.add_argument("--tls-cert-path", default=None)
    q.add_argument("--tls-key-path", default=None)
    q.add_argument("--request-id-headers", nargs="*", default=["x-request-id"])

    t = p.add_argument_group("Retries and circuit breaker")
    t.add_argument("--retry-max-retries", type=int, default=5)
    t.add_argument("--retry-initial-backoff-ms", type=int, default=50)
    t.add_argument("--retry-max-backoff-ms", type=int, default=30_000)
    t.add_argument("--retry-backoff-multiplier", type=float, default=1.5)
    t.add_argument("--retry-jitter-factor", type=float, default=0.2)
    t.add_argument("--disable-retries", action="store_true")
    t.add_argument("--cb-failure-threshold", type=int, default=10)
    t.add_argument("--cb-success-threshold", type=int, default=3)
    t.add_argument("--cb-timeout-duration-secs", type=float, default=60)
    t.add_argument("--cb-window-duration-secs", type=float, default=120)
    t.add_argument("--disable-circuit-breaker", action="store_true")

    h = p.add_argument_group("Health checks")
    h.add_argument("--health-failure-threshold", type=int, default=3)
    h.add_argument("--health-success-threshold", type=int, default=2)
    h.add_argument("--health-check-timeout-secs", type=float, default=5)
    h.add_argument("--health-check-interval-secs", type=float, default=60)
    h.add_argument("--health-check-endpoint", default="/health")
    h.add_argument("--disable-health-check", action="store_true")

    o = p.add_argument_group("Observability")
    o.add_argument("--prometheus-host", default=None, help="Serve metrics on a separate listener too.")
    o.add_argument("--prometheus-port", type=int, default=None)
    o.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    o.add_argument("--log-json", action="store_true", help="One JSON object per log line.")
    o.add_argument("--seed", type=int, default=None, help="Seed for random policies (reproducible tests).")
    return p


def _parse_bootstrap_port(values: list[str]) -> int | None:
    if len(values) < 2 or values[1].lower() == "none":
        return None
    try:
        return int(values[1])
    except ValueError:
        raise SystemExit(f"atom-router: --prefill {values[0]} {values[1]}: bootstrap port must be an integer or 'none'")


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    """Turn parsed flags into a `RouterConfig`, rejecting contradictory combinations early."""
    workers = [WorkerSpec(url=u) for u in args.worker_urls]
    for values in args.prefill:
        if len(values) > 2:
            raise SystemExit(f"atom-router: --prefill takes URL [BOOTSTRAP_PORT], got {values}")
        workers.append(WorkerSpec(url=values[0], role="prefill", bootstrap_port=_parse_bootstrap_port(values)))
    workers += [WorkerSpec(url=v[0], role="decode") for v in args.decode]
    if args.config_file:
        with open(args.config_file, encoding="utf-8") as f:
            for entry in json.load(f).get("workers", []):
                workers.append(WorkerSpec(**entry))
    has_pd = any(w.role != "regular" for w in workers)
    if has_pd and not args.pd_disaggregation:
        raise SystemExit("atom-router: --prefill/--decode need --pd-disaggregation")
    for flag in ("disagg_min_uncached_tokens", "disagg_max_prefill_queue"):
        if getattr(args, flag) < 0:
            raise SystemExit(f"atom-router: --{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)}")
    backend = args.backend or ("sglang" if args.pd_disaggregation else "openai")
    if args.pd_disaggregation and backend == "openai":
        raise SystemExit("atom-router: --backend openai serves co-located workers only; pick vllm, vllm-mooncake, sglang or atom")
    return RouterConfig(
        host=args.host,
        port=args.port,
        backend=backend,
        pd_disaggregation=args.pd_disaggregation,
        workers=workers,
        policy=args.policy,
        prefill_policy=args.prefill_policy,
        decode_policy=args.decode_policy,
        policy_config=PolicyConfig(
            cache_threshold=args.cache_threshold,
            balance_abs_threshold=args.balance_abs_threshold,
            balance_rel_threshold=args.balance_rel_threshold,
            eviction_interval_secs=args.eviction_interval_secs,
            max_tree_size=args.max_tree_size,
            session_header=args.session_header.lower(),
            prefix_key_length=args.prefix_key_length,
            hash_load_factor=args.hash_load_factor,
            max_sessions=args.max_sessions,
            kv_overlap_weight=args.kv_overlap_weight,
            kv_load_weight=args.kv_load_weight,
        ),
        disagg=DisaggConfig(
            always_pair=args.always_pair,
            min_uncached_tokens=args.disagg_min_uncached_tokens,
            max_prefill_queue=args.disagg_max_prefill_queue,
        ),
        retry=RetryConfig(
            max_retries=args.retry_max_retries,
            initial_backoff_ms=args.retry_initial_backoff_ms,
            max_backoff_ms=args.retry_max_backoff_ms,
            backoff_multiplier=args.retry_backoff_multiplier,
            jitter_factor=args.retry_jitter_factor,
            enabled=not args.disable_retries,
        ),
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=args.cb_failure_threshold,
            success_threshold=args.cb_success_threshold,
            timeout_duration_secs=args.cb_timeout_duration_secs,
            window_duration_secs=args.cb_window_duration_secs,
            enabled=not args.disable_circuit_breaker,
        ),
        health=HealthCheckConfig(
            failure_threshold=args.health_failure_threshold,
            success_threshold=args.health_success_threshold,
            timeout_secs=args.health_check_timeout_secs,
            interval_secs=args.health_check_interval_secs,
            endpoint=args.health_check_endpoint,
            enabled=not args.disable_health_check,
        ),
        admission=AdmissionConfig(
            max_concurrent_requests=args.max_concurrent_requests,
            queue_size=args.queue_size,
            queue_timeout_secs=args.queue_timeout_secs,
            rate_limit_tokens_per_second=args.rate_limit_tokens_per_second,
        ),
        request_timeout_secs=args.request_timeout_secs,
        worker_startup_timeout_secs=args.worker_startup_timeout_secs,
        worker_startup_check_interval=args.worker_startup_check_interval,
        max_payload_size=args.max_payload_size,
        api_key=args.api_key,
        admin_api_key=args.admin_api_key or args.api_key,
        tls_cert_path=args.tls_cert_path,
        tls_key_path=args.tls_key_path,
        request_id_headers=[h.lower() for h in args.request_id_headers],
        tokenizer_path=args.tokenizer_path,
        kv_events_port=args.kv_events_port,
        prometheus_host=args.prometheus_host,
        prometheus_port=args.prometheus_port,
        log_level=args.log_level,
        log_json=args.log_json,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    from router.server import serve  # heavy imports only once we really serve

    sys.exit(serve(config))
