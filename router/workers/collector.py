"""Prometheus collector for the workers: read from the registry at scrape time.

Why a collector and not gauges updated on every change: state, breaker and load live on
the `Worker` objects already; reading them when Prometheus scrapes leaves no second copy
that could drift.

Wiring: `prometheus_registry.register(WorkerCollector(manager))` once at app start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from router.workers.circuit_breaker import BreakerState
from router.workers.worker import WorkerState

if TYPE_CHECKING:
    from router.workers.lifecycle import WorkerManager


class WorkerCollector:
    """Each worker's lifecycle state, breaker state, in-flight load, failed health-probe
    streak and, while the load monitor has a fresh sample, its engine's own running /
    waiting requests and KV-cache usage. States are one-hot gauges so dashboards can sum
    by state."""

    def __init__(self, manager: WorkerManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        labels = ["worker_id", "url", "role"]
        state = GaugeMetricFamily("atom_mesh_worker_state", "1 for the worker's lifecycle state.", labels=[*labels, "state"])
        breaker = GaugeMetricFamily(
            "atom_mesh_worker_breaker_state", "1 for the worker's circuit-breaker state.", labels=[*labels, "state"]
        )
        in_flight = GaugeMetricFamily("atom_mesh_worker_in_flight_requests", "Requests in flight.", labels=labels)
        probes = GaugeMetricFamily(
            "atom_mesh_worker_health_consecutive_failures", "Failed health probes in a row.", labels=labels
        )
        engine_running = GaugeMetricFamily(
            "atom_mesh_worker_engine_running_requests", "Requests the engine reports running.", labels=labels
        )
        engine_waiting = GaugeMetricFamily(
            "atom_mesh_worker_engine_waiting_requests", "Requests the engine reports queued.", labels=labels
        )
        engine_kv = GaugeMetricFamily(
            "atom_mesh_worker_engine_kv_cache_usage", "Fraction of the engine's KV cache in use.", labels=labels
        )
        for w in self._manager.registry:
            ids = [w.worker_id, w.url, w.role.value]
            for s in WorkerState:
                state.add_metric([*ids, s.value], float(w.state is s))
            for b in BreakerState:
                breaker.add_metric([*ids, b.value], float(w.breaker.state is b))
            in_flight.add_metric(ids, w.in_flight_requests)
            probes.add_metric(ids, self._manager.health_counts(w)[0])
            if w.engine_load is not None:
                engine_running.add_metric(ids, w.engine_load.running)
                engine_waiting.add_metric(ids, w.engine_load.waiting)
                engine_kv.add_metric(ids, w.engine_load.kv_usage)
        yield from (state, breaker, in_flight, probes, engine_running, engine_waiting, engine_kv)
