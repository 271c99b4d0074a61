"""An engine's own load numbers, read from its Prometheus `/metrics` text (pure).

Why the engine's numbers and not only the router's in-flight counts: the engine knows
what it really holds (requests from other router replicas, from clients that bypass the
router, its real KV-cache fill), and every router replica reads the same numbers, so
load-based policies on several replicas agree.

Both engine families are understood; an engine that exports both (the simulator does)
is read as vLLM, so nothing is counted twice:

    vLLM     vllm:num_requests_running, vllm:num_requests_waiting,
             vllm:kv_cache_usage_perc (older releases: vllm:gpu_cache_usage_perc)
    SGLang   sglang:num_running_reqs, sglang:num_queue_reqs, sglang:token_usage

Request counts are summed over label sets (one per DP rank / engine core behind the
endpoint); KV usage is the largest of them, since the fullest rank is the one that
starts queueing. KV usage is a fraction in [0, 1] in both engines, whatever the name says.

The parser reads only the lines it needs (a vLLM scrape is hundreds of lines of
histograms, polled every second for every worker), so it is a line scan rather than a
full Prometheus text parser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_VLLM_RUNNING = "vllm:num_requests_running"
_VLLM_WAITING = "vllm:num_requests_waiting"
_VLLM_KV = "vllm:kv_cache_usage_perc"
_VLLM_KV_OLD = "vllm:gpu_cache_usage_perc"
_SGLANG_RUNNING = "sglang:num_running_reqs"
_SGLANG_WAITING = "sglang:num_queue_reqs"
_SGLANG_KV = "sglang:token_usage"
_NAMES = (_VLLM_RUNNING, _VLLM_WAITING, _VLLM_KV, _VLLM_KV_OLD, _SGLANG_RUNNING, _SGLANG_WAITING, _SGLANG_KV)


class EngineMetricsError(ValueError):
    """The text has no load numbers the router understands (not vLLM, not SGLang)."""


@dataclass(frozen=True)
class EngineLoad:
    """One sample of an engine's load; `sampled_at` is on the router's clock."""

    running: int
    waiting: int
    kv_usage: float  # fraction of the KV cache in use, 0..1
    sampled_at: float

    @property
    def requests(self) -> int:
        """Requests the engine holds: running plus queued."""
        return self.running + self.waiting


def parse_engine_load(text: str, sampled_at: float) -> EngineLoad:
    """The load numbers in a vLLM or SGLang `/metrics` text; `EngineMetricsError` if none."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith(_NAMES):
            continue
        name, value = _sample(line)
        if name in _NAMES and value is not None:
            samples.setdefault(name, []).append(value)
    if _VLLM_RUNNING in samples or _VLLM_WAITING in samples:
        running, waiting = samples.get(_VLLM_RUNNING, []), samples.get(_VLLM_WAITING, [])
        kv = samples.get(_VLLM_KV) or samples.get(_VLLM_KV_OLD, [])
    elif _SGLANG_RUNNING in samples or _SGLANG_WAITING in samples:
        running, waiting = samples.get(_SGLANG_RUNNING, []), samples.get(_SGLANG_WAITING, [])
        kv = samples.get(_SGLANG_KV, [])
    else:
        raise EngineMetricsError(
            f"no {_VLLM_RUNNING} / {_SGLANG_RUNNING} in the metrics; is this a vLLM or SGLang engine "
            "with its Prometheus metrics enabled? (--disable-load-monitoring turns the monitor off)"
        )
    return EngineLoad(
        running=round(sum(running)),
        waiting=round(sum(waiting)),
        kv_usage=max(kv, default=0.0),
        sampled_at=sampled_at,
    )


def _sample(line: str) -> tuple[str, float | None]:
    """(metric name, value) of one sample line `name{labels} value [timestamp]`."""
    brace = line.find("{")
    if brace >= 0:
        name, rest = line[:brace], line[line.rfind("}") + 1 :]
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    try:
        value = float(fields[0]) if fields else math.nan
    except ValueError:
        value = math.nan
    return name, value if math.isfinite(value) else None
