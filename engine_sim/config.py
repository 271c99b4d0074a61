"""Typed settings of one simulated engine and its fault knobs.

Every constant of the timing and cache model is a field here (and a CLI flag), with its
default stated as an assumption: a Llama-3-8B-class model, bf16, on one H100-class GPU.
See the README section "Engine simulator and benchmarks" for where each number comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

ROLES = ("regular", "prefill", "decode")
PROTOCOLS = ("vllm", "vllm-mooncake", "sglang")


@dataclass(frozen=True)
class EngineConfig:
    """Timing model, batching and KV-cache capacity of one simulated engine."""

    # Fixed cost of one forward pass: reading the weights once (16 GB / ~3 TB/s ~ 5 ms).
    step_overhead_ms: float = 5.0
    # Prefill is compute-bound: ~2*8e9 FLOP/token at ~400 TFLOP/s effective ~ 40 us/token.
    prefill_us_per_token: float = 40.0
    # Decode is bandwidth-bound: per sequence in the batch (sampling, small matmuls) ...
    decode_us_per_seq: float = 30.0
    # ... plus reading each sequence's KV: 128 KiB/token at ~3 TB/s ~ 0.04 us/token.
    decode_us_per_context_token: float = 0.04
    # P/D KV transfer: a fixed handshake plus 128 KiB/token at ~25 GB/s (200 Gb/s RDMA) ~ 5 us.
    kv_transfer_base_ms: float = 1.0
    kv_transfer_us_per_token: float = 5.0
    # Continuous batching limits (vLLM's max_num_seqs / max_num_batched_tokens).
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 8192
    # KV cache: vLLM's GPU block size and a capacity of 4096 blocks = 65,536 tokens.
    block_size: int = 16
    num_blocks: int = 4096
    max_model_len: int = 16384
    # Multiplies every duration: <1 runs the whole fleet faster than real time.
    time_scale: float = 1.0
    # How long a decode leg waits for its prefill leg's KV before failing (vLLM waits 480 s).
    kv_wait_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"engine setting {f.name} must be >= 0, got {value}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_blocks", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine setting {name} must be >= 1")


@dataclass
class FaultConfig:
    """Per-worker fault knobs; changed at run time through `POST /sim/faults`.

    Rates are probabilities per inference request, drawn from the worker's seeded RNG so a
    run is reproducible.
    """

    # Answer this fraction of requests with `error_status` (an OpenAI error body) at once.
    error_rate: float = 0.0
    error_status: int = 500
    # Delay this fraction of requests by `spike_ms` before they reach the engine.
    spike_rate: float = 0.0
    spike_ms: float = 0.0
    # Accept this fraction of requests and never answer (until the client gives up).
    hang_rate: float = 0.0
    # Close the connection after this many generated tokens (mid-stream for SSE).
    die_after_tokens: int | None = None
    # /health answers 503 (the engine "is up but unhealthy").
    unhealthy: bool = False
    # False: the worker stops listening and drops its open connections (a crashed engine).
    listening: bool = True
    # True: the engine runs no steps, so new requests queue as waiting (and /metrics says
    # so) and running ones stall, until it is false again: a saturated engine, held.
    paused: bool = False

    def __post_init__(self) -> None:
        for name in ("error_rate", "spike_rate", "hang_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {name} must be within [0, 1], got {value}")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"fault error_status must be an HTTP error status (400-599), got {self.error_status}")
        if self.spike_ms < 0:
            raise ValueError(f"fault spike_ms must be >= 0, got {self.spike_ms}")
        if self.die_after_tokens is not None and self.die_after_tokens < 0:
            raise ValueError(f"fault die_after_tokens must be >= 0 or null, got {self.die_after_tokens}")

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with `changes` applied; unknown keys are an error that names the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault knob(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class WorkerSpec:
    """One simulated worker of a fleet: where it listens and what it plays."""

    port: int = 0  # 0: any free port
    role: str = "regular"
    # P/D protocol spoken by prefill/decode workers (ignored by regular ones).
    protocol: str = "vllm"
    # Bootstrap port of a prefill worker (vllm-mooncake /query, sglang bootstrap); 0: free port.
    bootstrap_port: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"worker role must be one of {ROLES}, got {self.role!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"worker protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    @property
    def needs_bootstrap(self) -> bool:
        """Prefill workers of the concurrent protocols run a bootstrap server."""
        return self.role == "prefill" and self.protocol in ("vllm-mooncake", "sglang")
