"""Command line: `atom-router` / `python -m router`.

Flag names follow `sglang-router launch` where they overlap so teams can swap it in.
Each settings flag names the `RouterConfig` field it sets (its argparse `dest`, e.g.
"retry.max_retries"); its default and type are read from the config dataclasses, so a
default lives only in router.config. Backend and policy choices come from their
registries. Worker specs from flags and `--config-file` get the admin API's validation
(router.workers.specs); a bad one is a one-line error and exit status 2, like any usage
error.

Imports stay light: `--help` must not import the server stack, vllm, sglang or torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from router.adapters import ADAPTERS
from router.config import RouterConfig, WorkerSpec
from router.errors import WorkerRequestError
from router.policies.registry import POLICIES
from router.workers.specs import parse_worker_spec, validate_spec

_DEFAULTS = RouterConfig()


class UsageError(Exception):
    """A command line or config file the router cannot start with; printed as one line."""


def _option(group: argparse._ArgumentGroup, flag: str, field: str, **kwargs: Any) -> None:
    """A flag that sets `RouterConfig` field `field` ("port", "retry.max_retries"), with the
    dataclass's default and, unless given, the default's type."""
    default: Any = _DEFAULTS
    for part in field.split("."):
        default = getattr(default, part)
    if isinstance(default, list):
        default = list(default)  # never share the defaults' list with a parsed config
    elif default is not None and "action" not in kwargs:
        kwargs.setdefault("type", type(default))
    if "action" not in kwargs and "choices" not in kwargs:
        kwargs.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))  # not the dotted dest
    group.add_argument(flag, dest=field, default=default, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atom-router",
        description="OpenAI-compatible router for co-located and prefill/decode-disaggregated engines.",
    )
    g = p.add_argument_group("Workers")
    _option(g, "--host", "host", help="Address to listen on.")
    _option(g, "--port", "port", help="Port to listen on.")
    g.add_argument("--worker-urls", nargs="*", default=[], help="Co-located (regular) worker URLs.")
    g.add_argument(
        "--backend",
        choices=tuple(ADAPTERS),
        default=None,
        help="Engine P/D wire protocol: vllm (serial, NIXL-style kv_transfer_params), "
        "vllm-mooncake (concurrent, vLLM MooncakeConnector), sglang (bootstrap room), "
        "atom (relay), openai (co-located only). Default: sglang with --pd-disaggregation, else openai.",
    )
    _option(g, "--pd-disaggregation", "pd_disaggregation", action="store_true", help="Prefill/decode disaggregated mode.")
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
        help='JSON file {"workers": [{"url", "role", "bootstrap_port", "model", "labels", "kv_events_endpoint"}, ...]}.',
    )
    _option(g, "--worker-startup-timeout-secs", "worker_startup_timeout_secs")
    _option(g, "--worker-startup-check-interval", "worker_startup_check_interval")

    r = p.add_argument_group("Routing policy")
    _option(r, "--policy", "policy", choices=POLICIES)
    _option(r, "--prefill-policy", "prefill_policy", choices=POLICIES)
    _option(r, "--decode-policy", "decode_policy", choices=POLICIES)
    _option(r, "--cache-threshold", "policy_config.cache_threshold")
    _option(r, "--balance-abs-threshold", "policy_config.balance_abs_threshold")
    _option(r, "--balance-rel-threshold", "policy_config.balance_rel_threshold")
    _option(r, "--eviction-interval-secs", "policy_config.eviction_interval_secs")
    _option(r, "--max-tree-size", "policy_config.max_tree_size")
    _option(
        r, "--session-header", "policy_config.session_header", type=str.lower, help="Header whose value keys session affinity."
    )
    _option(
        r,
        "--prefix-key-length",
        "policy_config.prefix_key_length",
        help="Characters (or tokens) of the routing text that key prefix_hash.",
    )
    _option(
        r,
        "--hash-load-factor",
        "policy_config.hash_load_factor",
        help="Bounded-load factor for prefix_hash / consistent_hashing.",
    )
    _option(
        r, "--max-sessions", "policy_config.max_sessions", help="Session-affinity entries kept (least recently used dropped)."
    )
    _option(r, "--tokenizer-path", "tokenizer_path", help="Tokenizer dir or tokenizer.json for token-level routing keys.")
    _option(
        r,
        "--kv-events-port",
        "kv_events_port",
        type=int,
        help="kv_aware: read each worker's KV events (vLLM --kv-events-config, ZMQ) from tcp://<worker host>:PORT "
        "unless the worker names its own kv_events_endpoint (config file / admin API).",
    )
    _option(r, "--kv-overlap-weight", "policy_config.kv_overlap_weight", help="kv_aware: weight of the cached-prefix score.")
    _option(r, "--kv-load-weight", "policy_config.kv_load_weight", help="kv_aware: weight of the load score.")

    d = p.add_argument_group("Conditional disaggregation (P/D pools)")
    _option(
        d,
        "--always-pair",
        "disagg.always_pair",
        action="store_true",
        help="Pair a prefill worker with every request, even where the backend (vllm, vllm-mooncake) "
        "could let the decode worker prefill locally. sglang and atom pools always pair.",
    )
    _option(
        d,
        "--disagg-min-uncached-tokens",
        "disagg.min_uncached_tokens",
        metavar="N",
        help="Pair only when the decode worker lacks at least N of the prompt's tokens (prompt length "
        "minus its cached prefix); fewer go decode-only.",
    )
    _option(
        d,
        "--disagg-max-prefill-queue",
        "disagg.max_prefill_queue",
        metavar="N",
        help="Go decode-only when every prefill worker already has N or more requests in flight (0: never).",
    )

    q = p.add_argument_group("Requests, admission and security")
    _option(q, "--request-timeout-secs", "request_timeout_secs")
    _option(q, "--max-payload-size", "max_payload_size")
    _option(q, "--max-concurrent-requests", "admission.max_concurrent_requests", help="-1: unlimited.")
    _option(q, "--queue-size", "admission.queue_size")
    _option(q, "--queue-timeout-secs", "admission.queue_timeout_secs")
    _option(q, "--rate-limit-tokens-per-second", "admission.rate_limit_tokens_per_second", type=float)
    _option(q, "--api-key", "api_key", help="Bearer key required on inference endpoints.")
    _option(q, "--admin-api-key", "admin_api_key", help="Bearer key required on /workers* (default: --api-key).")
    _option(q, "--tls-cert-path", "tls_cert_path")
    _option(q, "--tls-key-path", "tls_key_path")
    _option(q, "--request-id-headers", "request_id_headers", nargs="*", type=str.lower)

    t = p.add_argument_group("Retries and circuit breaker")
    _option(t, "--retry-max-retries", "retry.max_retries")
    _option(t, "--retry-initial-backoff-ms", "retry.initial_backoff_ms")
    _option(t, "--retry-max-backoff-ms", "retry.max_backoff_ms")
    _option(t, "--retry-backoff-multiplier", "retry.backoff_multiplier")
    _option(t, "--retry-jitter-factor", "retry.jitter_factor")
    _option(t, "--disable-retries", "retry.enabled", action="store_false")
    _option(t, "--cb-failure-threshold", "circuit_breaker.failure_threshold")
    _option(t, "--cb-success-threshold", "circuit_breaker.success_threshold")
    _option(t, "--cb-timeout-duration-secs", "circuit_breaker.timeout_duration_secs")
    _option(t, "--cb-window-duration-secs", "circuit_breaker.window_duration_secs")
    _option(t, "--disable-circuit-breaker", "circuit_breaker.enabled", action="store_false")

    h = p.add_argument_group("Health checks")
    _option(h, "--health-failure-threshold", "health.failure_threshold")
    _option(h, "--health-success-threshold", "health.success_threshold")
    _option(h, "--health-check-timeout-secs", "health.timeout_secs")
    _option(h, "--health-check-interval-secs", "health.interval_secs")
    _option(h, "--health-check-endpoint", "health.endpoint")
    _option(h, "--disable-health-check", "health.enabled", action="store_false")

    o = p.add_argument_group("Observability")
    _option(o, "--prometheus-host", "prometheus_host", help="Serve metrics on a separate listener too.")
    _option(o, "--prometheus-port", "prometheus_port", type=int)
    _option(o, "--log-level", "log_level", choices=["debug", "info", "warning", "error"])
    _option(o, "--log-json", "log_json", action="store_true", help="One JSON object per log line.")
    _option(o, "--seed", "seed", type=int, help="Seed for random policies (reproducible tests).")

    s = p.add_argument_group("Replicas (shared state, docs/replicas.md)")
    _option(
        s,
        "--redis-url",
        "shared_state.redis_url",
        type=str,
        help="redis://HOST:PORT/DB shared by router replicas: one global --rate-limit-tokens-per-second bucket, "
        "and cache_aware's prefix tree fed by every replica's decisions. Default: nothing shared.",
    )
    _option(s, "--redis-key-prefix", "shared_state.redis_key_prefix", help="Prefix of the replicas' Redis keys and channels.")
    _option(
        s,
        "--tree-sync-max-key-length",
        "shared_state.tree_sync_max_key_length",
        help="cache_aware with --redis-url: characters (or tokens) of each routing key published to the other replicas.",
    )
    return p


def _from_flags(defaults: Any, args: argparse.Namespace, prefix: str = "", **overrides: Any) -> Any:
    """A config dataclass like `defaults` from the flags whose dest is one of its fields
    (a nested section's as "section.field"); fields without a flag keep their default."""
    values: dict[str, Any] = dict(overrides)
    for f in dataclasses.fields(defaults):
        dest = prefix + f.name
        default = getattr(defaults, f.name)
        if f.name in values:
            continue
        if dataclasses.is_dataclass(default):
            values[f.name] = _from_flags(default, args, dest + ".")
        elif hasattr(args, dest):
            values[f.name] = getattr(args, dest)
    return type(defaults)(**values)


def _flag_workers(args: argparse.Namespace) -> list[WorkerSpec]:
    """Workers from --worker-urls, --prefill and --decode, checked like any worker spec."""
    flagged: list[tuple[str, WorkerSpec]] = [(f"--worker-urls {u}", WorkerSpec(url=u)) for u in args.worker_urls]
    for values in args.prefill:
        flag = "--prefill " + " ".join(values)
        if len(values) > 2:
            raise UsageError(f"{flag}: takes URL [BOOTSTRAP_PORT]")
        port: int | None = None
        if len(values) == 2 and values[1].lower() != "none":
            try:
                port = int(values[1])
            except ValueError:
                raise UsageError(f"{flag}: bootstrap port must be an integer or 'none'") from None
        flagged.append((flag, WorkerSpec(url=values[0], role="prefill", bootstrap_port=port)))
    flagged += [(f"--decode {v[0]}", WorkerSpec(url=v[0], role="decode")) for v in args.decode]
    if any(spec.role != "regular" for _, spec in flagged) and not args.pd_disaggregation:
        raise UsageError("--prefill/--decode need --pd-disaggregation")
    for flag, spec in flagged:
        try:
            validate_spec(spec, args.pd_disaggregation)
        except WorkerRequestError as err:
            raise UsageError(f"{flag}: {err.message}") from None
    return [spec for _, spec in flagged]


def workers_from_file(path: str, pd_disaggregation: bool) -> list[WorkerSpec]:
    """The `workers` of a `--config-file`, each validated as `POST /workers` validates a
    body; a `UsageError` names the file, the entry and the field."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise UsageError(f"--config-file {path}: cannot read it: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config-file {path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f'--config-file {path}: must be a JSON object such as {{"workers": [...]}}')
    unknown = sorted(set(data) - {"workers"})
    if unknown:
        raise UsageError(f"--config-file {path}: unknown key(s) {unknown}; allowed: ['workers']")
    entries = data.get("workers", [])
    if not isinstance(entries, list):
        raise UsageError(f"--config-file {path}: 'workers' must be a list of worker objects")
    specs = []
    for index, entry in enumerate(entries):
        try:
            spec = parse_worker_spec(entry)
            validate_spec(spec, pd_disaggregation)
        except WorkerRequestError as err:
            raise UsageError(f"--config-file {path}: workers[{index}]: {err.message}") from None
        specs.append(spec)
    return specs


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    """Turn parsed flags into a `RouterConfig`; `UsageError` for a setting the router
    cannot start with (a bad worker, contradictory flags)."""
    workers = _flag_workers(args)
    if args.config_file:
        workers += workers_from_file(args.config_file, args.pd_disaggregation)
    backend = args.backend or ("sglang" if args.pd_disaggregation else "openai")
    if args.pd_disaggregation and backend == "openai":
        others = ", ".join(name for name in ADAPTERS if name != "openai")
        raise UsageError(f"--backend openai serves co-located workers only; pick one of {others}")
    for flag, dest in (
        ("--disagg-min-uncached-tokens", "disagg.min_uncached_tokens"),
        ("--disagg-max-prefill-queue", "disagg.max_prefill_queue"),
    ):
        if getattr(args, dest) < 0:
            raise UsageError(f"{flag} must be 0 or more, got {getattr(args, dest)}")
    max_key_length = getattr(args, "shared_state.tree_sync_max_key_length")
    if max_key_length < 1:
        raise UsageError(f"--tree-sync-max-key-length must be 1 or more, got {max_key_length}")
    redis_url = getattr(args, "shared_state.redis_url")
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--redis-url {redis_url}: expected redis://HOST:PORT[/DB], rediss://... or unix://PATH")
    if redis_url is not None and importlib.util.find_spec("redis") is None:
        raise UsageError("--redis-url needs the redis client: pip install atom-mesh[redis]")
    config: RouterConfig = _from_flags(_DEFAULTS, args, workers=workers, backend=backend)
    return config


def _exit_usage(err: UsageError) -> NoReturn:
    print(f"atom-router: error: {err}", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except UsageError as err:
        _exit_usage(err)
    from router.server import serve  # heavy imports only once we really serve

    sys.exit(serve(config))
