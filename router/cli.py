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
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from router.adapters import ADAPTERS
from router.config import RouterConfig, WorkerSpec
from router.errors import WorkerRequestError
from router.policies.registry import POLICIES
from router.workers.specs import parse_worker_list, validate_spec

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
        "--chat-template",
        "chat_template",
        help="Chat template (a file or the template text) for routing keys of chats; default: the tokenizer dir's own.",
    )
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

    s = p.add_argument_group("Shutdown")
    _option(
        s,
        "--shutdown-grace-period-secs",
        "shutdown_grace_period_secs",
        help="On SIGTERM/SIGINT: /readiness and new requests answer 503 at once; in-flight requests get this "
        "long to finish before they are cancelled and the router exits 0. A second signal exits at once.",
    )

    c = p.add_argument_group("Cores")
    _option(
        c,
        "--processes",
        "processes",
        help="Processes that serve requests: 0 (default) = one relay process per core, each carrying requests, "
        "with one coordinator process making every decision (placement, admission, breakers, admin API, /metrics) "
        "for all of them; 1 = one process does everything.",
    )

    k = p.add_argument_group("Worker discovery (a watched file, Kubernetes pods)")
    _option(
        k,
        "--discovery-file",
        "discovery.file",
        help="JSON or YAML (.yaml/.yml) list of workers, or {\"workers\": [...]}, entries as in --config-file; "
        "reread on change: added workers register, removed ones drain, a bad file keeps the last good view.",
    )
    _option(
        k,
        "--discovery-check-interval-secs",
        "discovery.check_interval_secs",
        help="Reread the discovery file at least this often, even when it looks unchanged.",
    )
    _option(k, "--service-discovery", "discovery.service_discovery", action="store_true", help="Workers from Kubernetes pods.")
    for flag, dest, what in (
        ("--selector", "discovery.selector", "regular worker pods"),
        ("--prefill-selector", "discovery.prefill_selector", "prefill pods (with --pd-disaggregation)"),
        ("--decode-selector", "discovery.decode_selector", "decode pods (with --pd-disaggregation)"),
    ):
        _option(k, flag, dest, nargs="+", metavar="KEY=VALUE", help=f"Labels of the {what}, e.g. app=vllm tier=gpu.")
    _option(k, "--service-discovery-port", "discovery.port", help="Port the engine serves on in each pod.")
    _option(
        k,
        "--service-discovery-namespace",
        "discovery.namespace",
        help="Namespace to watch (default: all namespaces, which needs a ClusterRole).",
    )
    _option(
        k,
        "--bootstrap-port-annotation",
        "discovery.bootstrap_port_annotation",
        help="Pod annotation that holds a prefill pod's bootstrap port.",
    )
    _option(
        k,
        "--service-discovery-protocol",
        "discovery.protocol",
        choices=("http", "grpc"),
        help="How the router talks to discovered pods: http:// workers, or grpc:// (token-level engines, docs/grpc.md).",
    )

    tr = p.add_argument_group("Tracing (OpenTelemetry; needs atom-mesh[otel])")
    _option(
        tr,
        "--otlp-traces-endpoint",
        "tracing.otlp_traces_endpoint",
        type=str,
        help="Export spans over OTLP and turn tracing on: HOST:PORT for OTLP/gRPC, http(s)://HOST:PORT[/PATH] "
        "for OTLP/HTTP protobuf (path default /v1/traces).",
    )
    _option(
        tr,
        "--enable-trace",
        "tracing.enable_trace",
        action="store_true",
        help="Turn tracing on (as in smg); without --otlp-traces-endpoint spans go to localhost:4317 (OTLP/gRPC).",
    )

    m = p.add_argument_group("Engine load monitoring and overload protection")
    _option(m, "--load-monitor-interval", "load_monitor.interval_secs", help="Seconds between scrapes of each worker's /metrics.")
    _option(m, "--disable-load-monitoring", "load_monitor.enabled", action="store_false")
    _option(
        m,
        "--worker-overload-waiting-requests",
        "load_monitor.overload_waiting_requests",
        metavar="N",
        help="A worker whose engine queues N or more requests is overloaded (>= 1).",
    )
    _option(
        m,
        "--worker-overload-token-usage",
        "load_monitor.overload_token_usage",
        metavar="FRACTION",
        help="A worker whose KV cache is at least this full (0-1] is overloaded.",
    )
    _option(m, "--disable-worker-overload-protection", "load_monitor.overload_protection", action="store_false")
    _option(
        m,
        "--worker-overload-shed",
        "load_monitor.overload_shed",
        action="store_true",
        help="When every candidate is overloaded, answer 503 with Retry-After instead of using the least loaded.",
    )

    rp = p.add_argument_group("Replicas (shared state, docs/replicas.md)")
    _option(
        rp,
        "--redis-url",
        "shared_state.redis_url",
        type=str,
        help="redis://HOST:PORT/DB shared by router replicas: one global --rate-limit-tokens-per-second bucket, "
        "and cache_aware's prefix tree fed by every replica's decisions. Default: nothing shared.",
    )
    _option(rp, "--redis-key-prefix", "shared_state.redis_key_prefix", help="Prefix of the replicas' Redis keys and channels.")
    _option(
        rp,
        "--tree-sync-max-key-length",
        "shared_state.tree_sync_max_key_length",
        help="cache_aware with --redis-url: characters (or tokens) of each routing key published to the other replicas.",
    )

    up = p.add_argument_group("Upstream connections (the inference legs to workers)")
    _option(up, "--upstream-connect-timeout-secs", "upstream.connect_timeout_secs", help="Seconds to connect to a worker.")
    _option(
        up,
        "--upstream-read-timeout-secs",
        "upstream.read_timeout_secs",
        type=float,
        help="Seconds a worker may stay silent while answering before the leg fails (default: only --request-timeout-secs).",
    )
    _option(
        up,
        "--upstream-max-idle-connections",
        "upstream.max_idle_connections_per_worker",
        help="Idle keep-alive connections kept per worker.",
    )
    _option(
        up,
        "--upstream-idle-timeout-secs",
        "upstream.idle_timeout_secs",
        help="Seconds an idle keep-alive connection to a worker is kept (keep it under the workers' own keep-alive timeout).",
    )

    gp = p.add_argument_group("Router-side processing for grpc:// workers (docs/router-side-processing.md)")
    _option(
        gp,
        "--model-path",
        "processing.model_path",
        type=str,
        help="Model directory the tokenizer, chat template and generation_config.json are read from "
        "(smg's flag; --tokenizer-path wins when both are given).",
    )
    _option(
        gp,
        "--generation-config",
        "processing.generation_config",
        help="Sampling defaults for unset request fields, as vLLM's flag: 'auto' (the model's generation_config.json), "
        "'vllm' (none), or a directory holding a generation_config.json.",
    )
    _option(
        gp,
        "--tokenizer-cache-dir",
        "processing.tokenizer_cache_dir",
        help="Where tokenizers fetched from grpc:// workers (GetTokenizer) are unpacked.",
    )
    _option(
        gp,
        "--disable-tokenizer-autoload",
        "processing.disable_tokenizer_autoload",
        action="store_true",
        help="Do not fetch a tokenizer from grpc:// workers when the router has none (smg's flag).",
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
    try:
        return parse_worker_list(data.get("workers", []), pd_disaggregation)
    except WorkerRequestError as err:
        raise UsageError(f"--config-file {path}: {err.message}") from None


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
        ("--shutdown-grace-period-secs", "shutdown_grace_period_secs"),
        ("--processes", "processes"),
    ):
        if getattr(args, dest) < 0:
            raise UsageError(f"{flag} must be 0 or more, got {getattr(args, dest)}")
    _check_load_monitor(args)
    _check_upstream(args)
    max_key_length = getattr(args, "shared_state.tree_sync_max_key_length")
    if max_key_length < 1:
        raise UsageError(f"--tree-sync-max-key-length must be 1 or more, got {max_key_length}")
    redis_url = getattr(args, "shared_state.redis_url")
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--redis-url {redis_url}: expected redis://HOST:PORT[/DB], rediss://... or unix://PATH")
    if redis_url is not None and importlib.util.find_spec("redis") is None:
        raise UsageError("--redis-url needs the redis client: pip install atom-mesh[redis]")
    config: RouterConfig = _from_flags(_DEFAULTS, args, workers=workers, backend=backend)
    _check_discovery(config)
    if config.tracing.enabled:
        from router.tracing import TracingUnavailable, check_available

        try:
            check_available(config.tracing)
        except TracingUnavailable as exc:
            raise UsageError(str(exc)) from None
    return config


def _check_load_monitor(args: argparse.Namespace) -> None:
    """The load monitor's settings are in range, or a `UsageError` says which is not."""
    interval = getattr(args, "load_monitor.interval_secs")
    waiting = getattr(args, "load_monitor.overload_waiting_requests")
    usage = getattr(args, "load_monitor.overload_token_usage")
    if not interval > 0:
        raise UsageError(f"--load-monitor-interval must be more than 0 seconds, got {interval}")
    if waiting < 1:
        raise UsageError(f"--worker-overload-waiting-requests must be 1 or more, got {waiting}")
    if not 0 < usage <= 1:
        raise UsageError(f"--worker-overload-token-usage must be within (0, 1], got {usage}")


def _check_upstream(args: argparse.Namespace) -> None:
    """The upstream client's settings are in range, or a `UsageError` says which is not."""
    for flag, dest in (
        ("--upstream-connect-timeout-secs", "upstream.connect_timeout_secs"),
        ("--upstream-idle-timeout-secs", "upstream.idle_timeout_secs"),
        ("--upstream-read-timeout-secs", "upstream.read_timeout_secs"),
    ):
        value = getattr(args, dest)
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be more than 0 seconds, got {value}")
    idle = getattr(args, "upstream.max_idle_connections_per_worker")
    if idle < 0:
        raise UsageError(f"--upstream-max-idle-connections must be 0 or more, got {idle}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _check_discovery(config: RouterConfig) -> None:
    """Discovery settings the router could only fail on later, refused at start."""
    from router.discovery.file_source import is_yaml
    from router.discovery.pods import SelectorError, pod_rules

    cfg = config.discovery
    if cfg.check_interval_secs <= 0:
        raise UsageError(f"--discovery-check-interval-secs must be more than 0, got {cfg.check_interval_secs:g}")
    if cfg.file and is_yaml(cfg.file) and not _importable("yaml"):
        raise UsageError(f"--discovery-file {cfg.file}: reading YAML needs PyYAML: pip install atom-mesh[yaml]")
    if not cfg.service_discovery:
        if cfg.selector or cfg.prefill_selector or cfg.decode_selector:
            raise UsageError("--selector/--prefill-selector/--decode-selector need --service-discovery")
        return
    if not _importable("kubernetes_asyncio"):
        raise UsageError("--service-discovery needs the Kubernetes client: pip install atom-mesh[k8s]")
    if not 0 < cfg.port < 65536:
        raise UsageError(f"--service-discovery-port {cfg.port} is not a TCP port (1-65535)")
    try:
        pod_rules(cfg, config.pd_disaggregation)
    except SelectorError as err:
        raise UsageError(str(err)) from None


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
