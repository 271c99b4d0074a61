"""Typed router settings, and the one place their defaults live.

`router.cli` builds one `RouterConfig` from flags (sglang-router's names where they
overlap), each flag's default read from these dataclasses; tests and embedders build it
directly. The names `backend` and `policy` accept come from their registries
(`router.adapters.ADAPTERS`, `router.policies.registry.POLICY_FACTORIES`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerSpec:
    """A worker as configured (flags, config file or admin API)."""

    url: str
    role: str = "regular"  # regular | prefill | decode
    bootstrap_port: int | None = None
    model: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # ZMQ endpoint of the engine's KV events (vLLM --kv-events-config), for kv_aware.
    kv_events_endpoint: str | None = None


@dataclass
class PolicyConfig:
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_secs: int = 60
    max_tree_size: int = 2**26
    # Bounded-load factor for consistent hashing: a worker may take at most this many
    # times the mean load before the ring walks on.
    hash_load_factor: float = 1.25
    session_header: str = "x-session-id"
    # prefix_hash / consistent_hashing key: the first this-many characters (or tokens,
    # when the router tokenizes) of the routing text.
    prefix_key_length: int = 256
    # Sticky sessions remembered by the session policy (least recently used forgotten first).
    max_sessions: int = 2**20
    # kv_aware: weights of the prefix score and the load score (both in [0, 1]).
    kv_overlap_weight: float = 1.0
    kv_load_weight: float = 0.5


@dataclass
class DisaggConfig:
    """When a P/D pool pairs a prefill with the chosen decode worker, and when decode
    prefills the prompt itself (`router.placement.disagg_decider` has the rule)."""

    # Pair every request, even where the backend could serve it decode-only.
    always_pair: bool = False
    # Pair only when the decode worker lacks at least this many of the prompt's tokens:
    # below it, the KV transfer and the second hop cost more than prefilling locally.
    min_uncached_tokens: int = 256
    # When every prefill candidate already has this many requests in flight, decode
    # prefills locally instead of queueing behind them (0: never).
    max_prefill_queue: int = 8


@dataclass
class RetryConfig:
    max_retries: int = 5
    initial_backoff_ms: int = 50
    max_backoff_ms: int = 30_000
    backoff_multiplier: float = 1.5
    jitter_factor: float = 0.2
    enabled: bool = True
    retryable_statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)


@dataclass
class CircuitBreakerConfig:
    failure_threshold: int = 10
    success_threshold: int = 3
    timeout_duration_secs: float = 60.0
    window_duration_secs: float = 120.0
    enabled: bool = True


@dataclass
class HealthCheckConfig:
    failure_threshold: int = 3
    success_threshold: int = 2
    timeout_secs: float = 5.0
    interval_secs: float = 60.0
    endpoint: str = "/health"
    enabled: bool = True


@dataclass
class AdmissionConfig:
    max_concurrent_requests: int = -1  # -1: unlimited
    queue_size: int = 100
    queue_timeout_secs: float = 60.0
    rate_limit_tokens_per_second: float | None = None


@dataclass
class DiscoveryConfig:
    """Where workers come from besides flags, --config-file and the admin API
    (`router.discovery`); flag names follow sglang-router / smg."""

    # A JSON or YAML list of worker specs, reread when it changes (None: off).
    file: str | None = None
    # Reread the file (and re-apply it) at least this often even when it looks unchanged.
    check_interval_secs: float = 60.0
    # Kubernetes pods by label selector (needs the k8s extra).
    service_discovery: bool = False
    # Label selectors as "key=value" pairs: regular workers, or the P/D pools.
    selector: list[str] = field(default_factory=list)
    prefill_selector: list[str] = field(default_factory=list)
    decode_selector: list[str] = field(default_factory=list)
    # The port the engine serves on inside each pod (the worker URL is <protocol>://<podIP>:<port>).
    port: int = 80
    # None: watch pods in every namespace (needs a ClusterRole).
    namespace: str | None = None
    # Pod annotation that carries a prefill pod's bootstrap port.
    bootstrap_port_annotation: str = "sglang.ai/bootstrap-port"
    # How the router talks to discovered pods (smg's --service-discovery-protocol): the
    # worker URL's scheme, http://<podIP>:<port> or grpc://<podIP>:<port>.
    protocol: str = "http"


@dataclass
class TracingConfig:
    """OpenTelemetry tracing (router.tracing); smg's flag names. Off unless one is set."""

    # `host:port`: OTLP/gRPC; `http(s)://host:port[/path]`: OTLP/HTTP protobuf
    # (path default /v1/traces). Setting it turns tracing on.
    otlp_traces_endpoint: str | None = None
    # smg's switch: tracing on, to `otlp_traces_endpoint` or else localhost:4317 (gRPC).
    enable_trace: bool = False

    @property
    def enabled(self) -> bool:
        return self.enable_trace or bool(self.otlp_traces_endpoint)

    @property
    def endpoint(self) -> str:
        return self.otlp_traces_endpoint or "localhost:4317"


@dataclass
class LoadMonitorConfig:
    """Reading each engine's own load numbers, and keeping requests off overloaded workers
    (smg's flag names and thresholds; `router.workers.load_monitor`, docs/load-monitor.md)."""

    enabled: bool = True
    # Seconds between scrapes of every worker's /metrics. smg polls every 10 s; 1 s keeps
    # the sample younger than a typical request, so overload is seen while it matters.
    interval_secs: float = 1.0
    # A worker whose engine queues at least this many requests is overloaded (>= 1).
    overload_waiting_requests: int = 8
    # ... or whose KV cache is at least this full (a fraction in (0, 1]).
    overload_token_usage: float = 0.8
    overload_protection: bool = True
    # Every candidate overloaded: refuse with 503 + Retry-After instead of taking the
    # least loaded of them.
    overload_shed: bool = False


@dataclass
class SharedStateConfig:
    """State shared between router replicas through Redis (off unless `redis_url` is set).

    What is shared, and what stays per replica, is in docs/replicas.md."""

    # redis://host:port/db; None keeps every replica's state its own.
    redis_url: str | None = None
    # Prefix of every Redis key and channel, so several router fleets can share one Redis.
    redis_key_prefix: str = "atom-mesh"
    # cache_aware: the most characters (or tokens) of a routing key published per decision.
    tree_sync_max_key_length: int = 8192


@dataclass
class UpstreamConfig:
    """The HTTP client of the inference legs (`router.transports.http_upstream`)."""

    # Seconds to open a TCP (and TLS) connection to a worker; past it the leg fails as
    # unreachable (502, retried on another worker).
    connect_timeout_secs: float = 10.0
    # Seconds a worker may send nothing while the router waits for its answer or its next
    # bytes; None: no limit but the request timeout (a long prefill is silent).
    read_timeout_secs: float | None = None
    # Idle keep-alive connections kept per worker; more in use at once are closed after use.
    max_idle_connections_per_worker: int = 512
    # Seconds an idle connection is kept: under uvicorn's 5 s keep-alive (vLLM's and
    # SGLang's servers), so the router drops it before the server does.
    idle_timeout_secs: float = 4.0


@dataclass
class ProcessingConfig:
    """Router-side processing for token-level (grpc://) workers: where the model's
    tokenizer, chat template and sampling defaults come from (docs/router-side-processing.md)."""

    # smg's --model-path: the model directory the tokenizer is read from when
    # --tokenizer-path is not given (--tokenizer-path wins, as in smg).
    model_path: str | None = None
    # Sampling defaults for fields a request leaves unset, as vLLM's --generation-config:
    # "auto" (the model directory's generation_config.json), "vllm" (none: vLLM's neutral
    # defaults), or a directory holding a generation_config.json.
    generation_config: str = "auto"
    # Without a configured tokenizer, a grpc:// worker's tokenizer is fetched from it
    # (GetTokenizer) once per model and unpacked here, by the bundle's SHA-256.
    tokenizer_cache_dir: str = "~/.cache/atom-mesh/tokenizers"
    # Do not fetch tokenizers from grpc:// workers (smg's --disable-tokenizer-autoload).
    disable_tokenizer_autoload: bool = False


@dataclass
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 30000
    backend: str = "openai"
    pd_disaggregation: bool = False
    workers: list[WorkerSpec] = field(default_factory=list)
    policy: str = "cache_aware"
    prefill_policy: str | None = None
    decode_policy: str | None = None
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    disagg: DisaggConfig = field(default_factory=DisaggConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    health: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    request_timeout_secs: float = 1800.0
    worker_startup_timeout_secs: float = 1800.0
    worker_startup_check_interval: float = 30.0
    max_payload_size: int = 512 * 1024 * 1024
    api_key: str | None = None
    admin_api_key: str | None = None
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    request_id_headers: list[str] = field(default_factory=lambda: ["x-request-id"])
    # Tokenizer (a local directory or tokenizer.json) for token-level routing keys.
    tokenizer_path: str | None = None
    # The chat template (a file, or the template itself) when the tokenizer directory has
    # none or another one is served (vLLM's --chat-template); chats are rendered with it.
    chat_template: str | None = None
    # kv_aware: subscribe to tcp://<worker host>:<this port> for workers that name no
    # kv_events_endpoint of their own (vLLM publishes on 5557 by default).
    kv_events_port: int | None = None
    prometheus_host: str | None = None
    prometheus_port: int | None = None
    log_level: str = "warning"
    log_json: bool = False
    seed: int | None = None
    # Graceful shutdown (smg's flag): after SIGTERM/SIGINT, how long in-flight requests may
    # run on before they are cancelled and the router exits.
    shutdown_grace_period_secs: float = 180.0
    # Processes serving requests: 0 = one per core (a coordinator owning every decision
    # plus that many relay processes, router.processes); 1 = everything in one process.
    processes: int = 0
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    load_monitor: LoadMonitorConfig = field(default_factory=LoadMonitorConfig)
    shared_state: SharedStateConfig = field(default_factory=SharedStateConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)

    def policy_for(self, role: str) -> str:
        """The policy name for a pool: prefill/decode overrides fall back to `policy`."""
        if role == "prefill" and self.prefill_policy:
            return self.prefill_policy
        if role == "decode" and self.decode_policy:
            return self.decode_policy
        return self.policy

    def uses_policy(self, name: str) -> bool:
        return name in {self.policy_for(role) for role in ("regular", "prefill", "decode")}
