"""Worker lifecycle: the pure state table and the manager over real HTTP endpoints."""

import asyncio

import pytest

from router.config import CircuitBreakerConfig, HealthCheckConfig, RouterConfig, WorkerSpec
from router.errors import WorkerConflictError, WorkerNotFoundError, WorkerRequestError
from router.load_guard import LoadGuard
from router.workers.lifecycle import InvalidTransition, WorkerManager, next_state
from router.workers.lifecycle import LifecycleEvent as E
from router.workers.registry import WorkerRegistry
from router.workers.worker import Role
from router.workers.worker import WorkerState as S
from testbed.ports import free_port


@pytest.mark.parametrize(
    "state,event,expected",
    [
        (S.PENDING, E.READY, S.READY),
        (S.PENDING, E.STARTUP_FAILED, S.FAILED),
        (S.READY, E.UNHEALTHY, S.NOT_READY),
        (S.NOT_READY, E.HEALTHY, S.READY),
        (S.READY, E.DRAIN, S.DRAINING),
        (S.NOT_READY, E.DRAIN, S.DRAINING),
        (S.FAILED, E.DRAIN, S.DRAINING),
        (S.PENDING, E.DRAIN, S.DRAINING),
        (S.DRAINING, E.HEALTHY, S.DRAINING),  # a drain is never undone by a health verdict
        (S.DRAINING, E.UNHEALTHY, S.DRAINING),
    ],
)
def test_valid_transitions(state, event, expected):
    assert next_state(state, event) is expected


@pytest.mark.parametrize(
    "state,event",
    [(S.FAILED, E.HEALTHY), (S.PENDING, E.HEALTHY), (S.READY, E.READY), (S.DRAINING, E.READY), (S.FAILED, E.READY)],
)
def test_invalid_transitions(state, event):
    with pytest.raises(InvalidTransition, match=state.value):
        next_state(state, event)


def _config(**kw) -> RouterConfig:
    cfg = RouterConfig(
        health=HealthCheckConfig(failure_threshold=2, success_threshold=1, timeout_secs=1, interval_secs=3600),
        worker_startup_timeout_secs=30,
        worker_startup_check_interval=0.05,
        circuit_breaker=CircuitBreakerConfig(failure_threshold=4, window_duration_secs=9),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
async def manager(session):
    managers = []

    async def make(config=None):
        m = WorkerManager(config or _config(), WorkerRegistry(), session=session, drain_poll_secs=0.01)
        await m.start()
        managers.append(m)
        return m

    yield make
    for m in managers:
        await m.stop()


async def test_registration_discovers_models_and_runs_hooks(endpoint, manager):
    endpoint.models = ["m-a", "m-b"]
    m = await manager()
    seen = []

    async def hook(worker, session):
        async with session.get(worker.url + "/health") as resp:
            worker.engine_info["health_status"] = resp.status
        seen.append(worker.worker_id)

    m.add_registration_hook(hook)
    w = await m.add(WorkerSpec(url=endpoint.url + "/", labels={"zone": "a"}), wait=True)
    assert w.state is S.READY and w.accepts_new_requests(m.clock())
    assert w.models == {"m-a", "m-b"} and w.url == endpoint.url and w.labels == {"zone": "a"}
    assert w.engine_info == {"health_status": 200} and seen == [w.worker_id]
    assert (w.breaker.failure_threshold, w.breaker.window_secs) == (4, 9)  # built from --cb-* flags


async def test_hooks_only_run_for_their_roles(endpoint, manager):
    m = await manager(_config(pd_disaggregation=True))
    ran = []

    async def hook(worker, session):
        ran.append(worker.role)

    m.add_registration_hook(hook, roles={Role.PREFILL})
    await m.add(WorkerSpec(url=endpoint.url, role="prefill", bootstrap_port=8998), wait=True)
    await m.add(WorkerSpec(url=endpoint.url, role="decode"), wait=True)
    assert ran == [Role.PREFILL]


async def test_worker_without_model_list_matches_any_model(endpoint, manager):
    endpoint.models_status = 404
    m = await manager()
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    assert w.state is S.READY and w.models == frozenset() and w.serves("anything")
    endpoint.models_status = 200
    w2 = await m.add(WorkerSpec(url=endpoint.url.replace("127.0.0.1", "localhost"), model="given"), wait=True)
    assert w2.models == {"given", "tiny"}


async def test_pending_until_ready_then_ready(endpoint, manager):
    endpoint.health_status = 503
    m = await manager()
    w = await m.add(WorkerSpec(url=endpoint.url))
    assert w.state is S.PENDING and not w.accepts_new_requests(m.clock())
    for _ in range(200):  # bounded: the worker is probed every 0.05 s
        if endpoint.health_hits >= 2:
            break
        await asyncio.sleep(0.02)
    assert w.state is S.PENDING and "503" in w.last_error
    endpoint.health_status = 200
    for _ in range(200):
        if w.state is S.READY:
            break
        await asyncio.sleep(0.02)
    assert w.state is S.READY and w.last_error == ""


async def test_startup_timeout_fails_the_worker(manager):
    m = await manager(_config(worker_startup_timeout_secs=0.2))
    w = await m.add(WorkerSpec(url=f"http://127.0.0.1:{free_port()}"), wait=True)
    assert w.state is S.FAILED
    assert "--worker-startup-timeout-secs" in w.last_error
    assert m.registry.get(w.worker_id) is w  # stays listed until an operator removes it


async def test_failing_hook_fails_the_worker(endpoint, manager):
    m = await manager()

    async def hook(worker, session):
        raise RuntimeError("no /kv_transfer_info; start the engine with --kv-transfer-config")

    m.add_registration_hook(hook)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    assert w.state is S.FAILED and "kv_transfer_info" in w.last_error


async def test_duplicate_and_unknown_workers(endpoint, manager):
    m = await manager()
    await m.add(WorkerSpec(url=endpoint.url), wait=True)
    with pytest.raises(WorkerConflictError):
        await m.add(WorkerSpec(url=endpoint.url))
    with pytest.raises(WorkerNotFoundError):
        m.get("nope")
    with pytest.raises(WorkerNotFoundError):
        await m.drain("nope")


async def test_add_refuses_a_bad_spec_before_registering(manager):
    m = await manager()
    with pytest.raises(WorkerRequestError) as info:
        await m.add(WorkerSpec(url="localhost:8000"))
    assert info.value.param == "url" and len(m.registry) == 0


async def test_configured_workers_register_at_start(endpoint, manager):
    m = await manager(_config(workers=[WorkerSpec(url=endpoint.url)]))
    (w,) = list(m.registry)
    for _ in range(200):
        if w.state is S.READY:
            break
        await asyncio.sleep(0.02)
    assert w.state is S.READY


async def test_health_verdicts_move_ready_and_not_ready(endpoint, manager):
    m = await manager()
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    endpoint.health_status = 500
    await m.health.check_once()
    assert w.state is S.READY  # one failure is below the threshold of 2
    await m.health.check_once()
    assert w.state is S.NOT_READY and not w.accepts_new_requests(m.clock()) and "500" in w.last_error
    assert m.health_counts(w) == (2, 0)
    endpoint.health_status = 200
    await m.health.check_once()
    assert w.state is S.READY and w.last_error == ""


async def test_health_loop_runs_on_its_own(endpoint, manager):
    cfg = _config()
    cfg.health.interval_secs = 0.02
    m = await manager(cfg)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    endpoint.health_status = 503
    for _ in range(500):
        if w.state is S.NOT_READY:
            break
        await asyncio.sleep(0.02)
    assert w.state is S.NOT_READY


async def test_drain_waits_for_in_flight_requests(endpoint, manager):
    m = await manager()
    removed = []
    m.registry.on_removed(removed.append)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    guards = [LoadGuard([w], tokens=10), LoadGuard([w], tokens=5)]
    await m.drain(w.worker_id)
    assert w.state is S.DRAINING and not w.accepts_new_requests(m.clock())
    await asyncio.sleep(0.05)
    assert m.registry.get(w.worker_id) is w  # still listed: two requests in flight
    endpoint.health_status = 200
    await m.health.check_once()
    assert w.state is S.DRAINING  # health never revives a draining worker
    assert list(m._checked_workers()) == []
    guards[0].release()
    await asyncio.sleep(0.05)
    assert m.registry.get(w.worker_id) is w
    guards[1].release()
    await m.drain(w.worker_id, wait=True)  # idempotent; waits for the same drain
    assert m.registry.get(w.worker_id) is None and removed == [w]
    assert (w.in_flight_requests, w.in_flight_tokens) == (0, 0)


async def test_drain_of_idle_or_pending_worker_removes_it(endpoint, manager):
    endpoint.health_status = 503
    m = await manager()
    w = await m.add(WorkerSpec(url=endpoint.url))
    await m.drain(w.worker_id, wait=True)
    assert m.registry.get(w.worker_id) is None and w.state is S.DRAINING


async def test_drain_deadline_removes_a_stuck_worker(endpoint, manager):
    m = await manager(_config(request_timeout_secs=0.1))
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    guard = LoadGuard([w])
    await m.drain(w.worker_id, wait=True)
    assert m.registry.get(w.worker_id) is None
    guard.release()
    assert w.in_flight_requests == 0


async def test_remove_is_immediate_and_forgets_health(endpoint, manager):
    m = await manager()
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    endpoint.health_status = 500
    await m.health.check_once()
    assert m.health_counts(w) == (1, 0)
    guard = LoadGuard([w])
    assert m.remove(w.worker_id) is w and len(m.registry) == 0
    guard.release()  # in-flight request on a removed worker still releases cleanly
    assert w.in_flight_requests == 0 and m.health_counts(w) == (0, 0)


async def test_waiting_add_returns_when_the_worker_is_removed_during_start_up(endpoint, manager):
    endpoint.health_status = 503
    m = await manager()
    adding = asyncio.create_task(m.add(WorkerSpec(url=endpoint.url), wait=True))
    for _ in range(200):
        if len(m.registry):
            break
        await asyncio.sleep(0.01)
    (w,) = list(m.registry)
    m.remove(w.worker_id)
    assert await adding is w and w.state is S.PENDING  # no exception leaks into the admin handler
