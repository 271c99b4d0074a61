"""Prometheus collectors read live state: worker state/breaker/in-flight, admission queue and rejections."""

from prometheus_client import CollectorRegistry, generate_latest

from router.admission import AdmissionCollector, AdmissionController
from router.config import AdmissionConfig, RouterConfig
from router.errors import QueueFull
from router.load_guard import LoadGuard
from router.workers.collector import WorkerCollector
from router.workers.lifecycle import WorkerManager
from router.workers.registry import WorkerRegistry
from router.workers.worker import Worker, WorkerState


def test_worker_collector_reflects_registry():
    registry = WorkerRegistry()
    manager = WorkerManager(RouterConfig(), registry)
    w = registry.add(Worker(url="http://127.0.0.1:9", worker_id="wx", state=WorkerState.NOT_READY))
    w.breaker.failure_threshold = 1
    w.breaker.record_failure(0)
    prom = CollectorRegistry()
    prom.register(WorkerCollector(manager))
    guard = LoadGuard([w])
    labels = {"worker_id": "wx", "url": "http://127.0.0.1:9", "role": "regular"}
    assert prom.get_sample_value("atom_mesh_worker_state", {**labels, "state": "not_ready"}) == 1
    assert prom.get_sample_value("atom_mesh_worker_state", {**labels, "state": "ready"}) == 0
    assert prom.get_sample_value("atom_mesh_worker_breaker_state", {**labels, "state": "open"}) == 1
    assert prom.get_sample_value("atom_mesh_worker_in_flight_requests", labels) == 1
    guard.release()
    assert prom.get_sample_value("atom_mesh_worker_in_flight_requests", labels) == 0
    registry.remove("wx")
    assert b"wx" not in generate_latest(prom)


async def test_admission_collector_counts_rejections():
    adm = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=0))
    prom = CollectorRegistry()
    prom.register(AdmissionCollector(adm))
    slot = await adm.acquire()
    try:
        await adm.acquire()
    except QueueFull:
        pass
    assert prom.get_sample_value("atom_mesh_admission_active_requests") == 1
    assert prom.get_sample_value("atom_mesh_admission_queue_depth") == 0
    assert prom.get_sample_value("atom_mesh_admission_rejections_total", {"reason": "queue_full"}) == 1
    slot.release()
    assert prom.get_sample_value("atom_mesh_admission_active_requests") == 0
