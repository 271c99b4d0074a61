"""Worker lifecycle: the pure state table and the manager over real HTTP endpoints."""

import asyncio
import itertools
from collections.abc import Callable

import pytest

from router.config import CircuitBreakerConfig, HealthCheckConfig, RouterConfig, WorkerSpec
from router.errors import WorkerConflictError, WorkerNotFoundError, WorkerRequestError
from router.load_guard import LoadGuard
from router.workers.lifecycle import WorkerManager
from router.workers.registry import WorkerRegistry
from router.workers.transitions import InvalidTransition, next_state
from router.workers.transitions import LifecycleEvent as E
from router.workers.worker import Role, Worker
from router.workers.worker import WorkerState as S
from testbed.ports import free_port


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds, checking every few milliseconds; fail after 10 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


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

    async def make(config=None, **kwargs):
        m = WorkerManager(config or _config(), WorkerRegistry(), session=session, **kwargs)
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
    await _until(lambda: endpoint.health_hits >= 2, "two start-up probes")
    assert w.state is S.PENDING and "503" in w.last_error
    endpoint.health_status = 200
    await _until(lambda: w.state is S.READY, "the worker to turn ready")
    assert w.last_error == ""


async def test_startup_timeout_fails_the_worker(manager):
    m = await manager(_config(worker_startup_timeout_secs=0.2))
    w = await m.add(WorkerSpec(url=f"http://127.0.0.1:{free_port()}"), wait=True)
    assert w.state is S.FAILED
    assert "--worker-startup-timeout-secs" in w.last_error
    assert m.registry.get(w.worker_id) is w  # stays listed until an operator removes it


async def test_startup_deadline_is_read_from_the_managers_clock(endpoint, manager):
    endpoint.health_status = 503
    ticks = itertools.count(0, 1000)  # every reading of the clock is 1000 s later
    m = await manager(_config(worker_startup_timeout_secs=30), clock=lambda: float(next(ticks)))
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    assert w.state is S.FAILED and "not ready after 30s" in w.last_error
    assert endpoint.health_hits == 1  # failed on the first probe, not after 30 real seconds


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
    await _until(lambda: w.state is S.READY, "the configured worker to turn ready")


async def test_health_verdicts_move_ready_and_not_ready(endpoint, manager):
    cfg = _config()
    cfg.health.interval_secs = 0.02  # the manager's own health loop decides
    m = await manager(cfg)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    endpoint.health_status = 500
    await _until(lambda: m.health_counts(w)[0] >= 1, "a failed probe")
    if m.health_counts(w)[0] == 1:
        assert w.state is S.READY  # one failure is below the threshold of 2
    await _until(lambda: w.state is S.NOT_READY, "the threshold to take the worker out")
    assert not w.accepts_new_requests(m.clock()) and "500" in w.last_error
    assert m.health_counts(w)[0] >= 2 and m.health_counts(w)[1] == 0
    endpoint.health_status = 200
    await _until(lambda: w.state is S.READY, "one good probe (threshold 1) to bring it back")
    assert w.last_error == ""


async def test_health_loop_runs_on_its_own(endpoint, manager):
    cfg = _config()
    cfg.health.interval_secs = 0.02
    m = await manager(cfg)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    endpoint.health_status = 503
    await _until(lambda: w.state is S.NOT_READY, "the health loop to take the worker out")


async def test_drain_waits_for_in_flight_requests(endpoint, manager, session):
    m = await manager()
    removed = []
    m.registry.on_removed(removed.append)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    guards = [LoadGuard([w], tokens=10), LoadGuard([w], tokens=5)]
    await m.drain(w.worker_id)
    assert w.state is S.DRAINING and not w.accepts_new_requests(m.clock())
    await _until(lambda: w.idle is not None, "the drain to wait for the worker's requests")
    assert m.registry.get(w.worker_id) is w  # still listed: two requests in flight
    async with session.get(endpoint.url + "/health"):  # a real round trip: the drain had its turns
        pass
    assert w.state is S.DRAINING and m.registry.get(w.worker_id) is w
    guards[0].release()
    assert not w.idle.is_set()  # one request left: nothing wakes the drain
    async with session.get(endpoint.url + "/health"):
        pass
    assert m.registry.get(w.worker_id) is w
    guards[1].release()
    await m.drain(w.worker_id, wait=True)  # idempotent; waits for the same drain
    assert m.registry.get(w.worker_id) is None and removed == [w]
    assert (w.in_flight_requests, w.in_flight_tokens) == (0, 0) and w.idle is None


def test_load_guard_signals_idle_only_when_the_last_request_ends():
    a, b = Worker(url="http://a:1"), Worker(url="http://b:1")
    a.idle = asyncio.Event()
    first, second = LoadGuard([a, b], tokens=3), LoadGuard([a])
    first.release()
    assert not a.idle.is_set() and a.in_flight_requests == 1
    first.release()  # idempotent: releasing twice neither counts twice nor signals
    assert not a.idle.is_set() and a.in_flight_requests == 1
    second.release()
    assert a.idle.is_set() and (a.in_flight_requests, a.in_flight_tokens, b.in_flight_requests) == (0, 0, 0)


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


async def test_drain_deadline_is_read_from_the_managers_clock(endpoint, manager):
    readings = itertools.count()
    start = [0.0]

    def clock() -> float:  # stands still until the drain starts, then runs 10000 s per reading
        return start[0] + 10_000 * next(readings) if start[0] else 0.0

    m = await manager(_config(request_timeout_secs=3600), clock=clock)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    guard = LoadGuard([w])
    start[0] = 1.0
    await m.drain(w.worker_id, wait=True)  # an hour of the manager's time, no real wait
    assert m.registry.get(w.worker_id) is None and w.in_flight_requests == 1
    guard.release()


async def test_remove_is_immediate_and_forgets_health(endpoint, manager):
    cfg = _config()
    cfg.health.interval_secs = 0.02
    m = await manager(cfg)
    w = await m.add(WorkerSpec(url=endpoint.url), wait=True)
    endpoint.health_status = 500
    await _until(lambda: m.health_counts(w)[0] >= 1, "a failed probe")
    guard = LoadGuard([w])
    assert m.remove(w.worker_id) is w and len(m.registry) == 0
    guard.release()  # in-flight request on a removed worker still releases cleanly
    assert w.in_flight_requests == 0 and m.health_counts(w) == (0, 0)


async def test_waiting_add_returns_when_the_worker_is_removed_during_start_up(endpoint, manager):
    endpoint.health_status = 503
    m = await manager()
    adding = asyncio.create_task(m.add(WorkerSpec(url=endpoint.url), wait=True))
    await _until(lambda: len(m.registry) > 0, "the worker to be registered")
    (w,) = list(m.registry)
    m.remove(w.worker_id)
    assert await adding is w and w.state is S.PENDING  # no exception leaks into the admin handler
