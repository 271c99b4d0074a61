"""Prometheus metrics of the request path, in one registry owned by the app.

Each app gets its own `CollectorRegistry` (tests build many apps in one process). Worker
state, breaker state and in-flight counts come from `router.workers.lifecycle.WorkerCollector`
and admission from `router.admission.AdmissionCollector`, registered into the same
registry by the app: read at scrape time, so they cannot drift from the counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


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
        self.ttft = Histogram(
            "atom_mesh_time_to_first_token_seconds",
            "Time to the first streamed chunk",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "atom_mesh_time_per_output_token_seconds",
            "Mean time between streamed chunks after the first",
            ["route"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.retries = Counter("atom_mesh_retries", "Upstream attempts retried, by cause", ["route", "cause"], registry=r)
        self.placements = Counter(
            "atom_mesh_placements", "Placement decisions by pool role, policy and reason", ["role", "policy", "reason"], registry=r
        )
        self.upstream_failures = Counter(
            "atom_mesh_upstream_failures", "Failed upstream attempts by worker", ["worker", "role"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
