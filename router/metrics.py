"""Prometheus metrics of the request path, in one registry owned by the app.

Each app gets its own `CollectorRegistry` (tests build many apps in one process). Worker
state, breaker state and in-flight counts come from `router.workers.collector.WorkerCollector`
and admission from `router.admission.AdmissionCollector`, registered into the same
registry by the app: read at scrape time, so they cannot drift from the counters.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_INTER_EVENT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)
_TOKEN_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "atom_mesh_requests", "Requests by route, model and final HTTP status", ["route", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "atom_mesh_request_duration_seconds", "End-to-end latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        # Both stream metrics count SSE events that carry choices (router.sse), not network
        # chunks: an event usually holds one token, but may hold several (or one per choice
        # with n > 1), hence "event", not "token", in the second name.
        self.ttft = Histogram(
            "atom_mesh_time_to_first_token_seconds",
            "Time from the request's arrival to the first streamed output event",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_event = Histogram(
            "atom_mesh_inter_event_latency_seconds",
            "Mean time between a stream's output events after the first, one observation per stream",
            ["route"],
            buckets=_INTER_EVENT_BUCKETS,
            registry=r,
        )
        self.retries = Counter("atom_mesh_retries", "Upstream attempts retried, by cause", ["route", "cause"], registry=r)
        self.placements = Counter(
            "atom_mesh_placements",
            "Placement decisions by pool role, policy and reason",
            ["role", "policy", "reason"],
            registry=r,
        )
        self.disagg_decisions = Counter(
            "atom_mesh_disagg_decisions",
            "P/D plans by decision (pair, decode_only) and the rule that chose it",
            ["decision", "reason"],
            registry=r,
        )
        self.disagg_uncached_tokens = Histogram(
            "atom_mesh_disagg_uncached_tokens",
            "Prompt tokens the chosen decode worker does not cache, per P/D plan",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.upstream_failures = Counter(
            "atom_mesh_upstream_failures", "Failed upstream attempts by worker", ["worker", "role"], registry=r
        )

        # `.labels()` validates and locks on every call; the hot path reuses the children.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._done: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: label values here are bounded (routes, known
        models, statuses, reasons, registered workers)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def request_done(self, route: str, model: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        key = (route, model, status)
        pair = self._done.get(key)
        if pair is None:
            pair = self._done[key] = (self.requests.labels(route, model, str(status)), self.latency.labels(route))
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
