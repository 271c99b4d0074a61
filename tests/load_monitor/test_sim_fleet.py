"""The load monitor and overload protection against a real simulated fleet (its own
process, real HTTP): a worker whose queue is held full gets no new request while others
have room, and gets requests again once it drains; with shedding, a fleet that is full
everywhere answers 503 with Retry-After.

A queue is held full with the simulator's `paused` knob (its engine runs no steps) and
requests sent to the worker directly, around the router, as another replica's traffic
would be: the router learns about them only from the engine's /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from router.config import LoadMonitorConfig
from router.workers.load_monitor import STALE_AFTER_INTERVALS, LoadMonitor
from router.workers.worker import Worker
from testbed.sim_fleet import SimFleet, start_fleet
from tests.support.fault_harness import body
from tests.support.inprocess_router import RunningRouter, make_config, metrics_with, regular, running_router

pytestmark = pytest.mark.timeout(120)

FAST = LoadMonitorConfig(interval_secs=0.2)
# A request sent to a paused worker by mistake ends (504) instead of stalling the test.
REQUEST_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[SimFleet]:
    f = start_fleet(tmp_path_factory.mktemp("loadmon"), "--regular", "3", "--time-scale", "0.1")
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(autouse=True)
def _unpaused(fleet: SimFleet) -> Iterator[None]:
    yield
    fleet.clear_faults()


async def _until(what: str, check: Callable[[], Awaitable[bool] | bool], deadline_s: float = 20.0) -> None:
    """Wait for an observable state, bounded; fail naming it."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def _admin(http: aiohttp.ClientSession, fleet: SimFleet, method: str, path: str, payload: Any = None) -> Any:
    async with http.request(method, fleet.admin_url + path, json=payload) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _received(http: aiohttp.ClientSession, fleet: SimFleet) -> list[int]:
    stats = await _admin(http, fleet, "GET", "/sim/stats")
    return [w["received"] for w in stats["workers"]]


async def _hold_full(http: aiohttp.ClientSession, fleet: SimFleet, index: int, queued: int) -> list[asyncio.Task[int]]:
    """Pause worker `index` and queue `queued` requests on it directly; returns their tasks
    (each ends with the HTTP status once the worker is unpaused)."""
    await _admin(http, fleet, "POST", f"/sim/workers/{index}/faults", {"paused": True})
    url = fleet.workers[index]["url"]

    async def one() -> int:
        async with http.post(url + "/v1/completions", json=body(max_tokens=2)) as resp:
            await resp.read()
            return resp.status

    return [asyncio.create_task(one()) for _ in range(queued)]


def _router_worker(router: RunningRouter, url: str) -> Worker:
    return next(w for w in router.workers if w.url == url)


async def _completions(router: RunningRouter, n: int) -> list[int]:
    async def one() -> int:
        async with await router.post("/v1/completions", body(max_tokens=2)) as resp:
            await resp.read()
            return resp.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_a_worker_held_full_gets_nothing_while_others_have_room_then_recovers(fleet: SimFleet):
    urls = fleet.urls()
    config = make_config(workers=regular(*urls), load_monitor=FAST, request_timeout_secs=REQUEST_TIMEOUT)
    async with running_router(config) as router:
        http = router.http
        held = _router_worker(router, urls[0])
        queued = await _hold_full(http, fleet, 0, FAST.overload_waiting_requests)

        def sampled_full() -> bool:
            return held.engine_load is not None and held.engine_load.waiting >= FAST.overload_waiting_requests

        await _until("the monitor sees worker 0's full queue", sampled_full)
        before = await _received(http, fleet)
        assert await _completions(router, 12) == [200] * 12
        after = await _received(http, fleet)
        assert after[0] == before[0], "the overloaded worker got a request"
        assert sum(after[1:]) - sum(before[1:]) == 12
        metrics = await metrics_with(router, "overload_filtered")
        filtered = '{policy="round_robin",reason="round_robin+overload_filtered",role="regular"}'
        assert f"atom_mesh_placements_total{filtered} 12.0" in metrics
        held_labels = f'{{role="regular",url="{urls[0]}",worker_id="{held.worker_id}"}}'
        assert f"atom_mesh_worker_engine_waiting_requests{held_labels} 8.0" in metrics

        await _admin(http, fleet, "POST", "/sim/workers/0/faults", {"paused": False})
        assert await asyncio.gather(*queued) == [200] * len(queued)
        await _until("the monitor sees worker 0 drained", lambda: held.engine_load is not None and held.engine_load.waiting == 0)
        before = await _received(http, fleet)
        assert await _completions(router, 6) == [200] * 6
        assert (await _received(http, fleet))[0] > before[0], "the recovered worker got no request"


async def test_shed_mode_refuses_with_503_and_retry_after_when_every_worker_is_full(fleet: SimFleet):
    load = replace(FAST, overload_waiting_requests=2, overload_shed=True)
    config = make_config(workers=regular(*fleet.urls()), load_monitor=load, request_timeout_secs=REQUEST_TIMEOUT)
    async with running_router(config) as router:
        http = router.http
        queued = [t for i in range(3) for t in await _hold_full(http, fleet, i, 2)]
        await _until(
            "the monitor sees every queue full",
            lambda: all(w.engine_load is not None and w.engine_load.waiting >= 2 for w in router.workers),
        )
        async with await router.post("/v1/completions", body(max_tokens=2)) as resp:
            assert resp.status == 503
            assert resp.headers["retry-after"] == "1"
            error = (await resp.json())["error"]
            assert error["code"] == "worker_overload_protection_shed" and "overloaded" in error["message"]
        for i in range(3):
            await _admin(http, fleet, "POST", f"/sim/workers/{i}/faults", {"paused": False})
        assert await asyncio.gather(*queued) == [200] * len(queued)
        await _until(
            "the monitor sees the queues drained",
            lambda: all(w.engine_load is not None and w.engine_load.waiting == 0 for w in router.workers),
        )
        assert await _completions(router, 3) == [200] * 3


async def test_all_full_without_shed_goes_to_the_least_loaded(fleet: SimFleet):
    load = replace(FAST, overload_waiting_requests=2)
    urls = fleet.urls()
    config = make_config(workers=regular(*urls), load_monitor=load, request_timeout_secs=REQUEST_TIMEOUT)
    async with running_router(config) as router:
        http = router.http
        queued = [
            *(await _hold_full(http, fleet, 0, 4)),
            *(await _hold_full(http, fleet, 1, 2)),
            *(await _hold_full(http, fleet, 2, 5)),
        ]
        workers = [_router_worker(router, url) for url in urls]
        await _until(
            "the monitor sees every queue",
            lambda: [w.engine_load.waiting if w.engine_load else None for w in workers] == [4, 2, 5],
        )
        before = await _received(http, fleet)
        # The request waits in worker 1's paused queue, so it is sent, then the worker unpaused.
        pending = asyncio.create_task(_completions(router, 1))
        await _until("the request reached a worker", lambda: _arrived(http, fleet, before))
        assert (await _received(http, fleet))[1] == before[1] + 1
        for i in range(3):
            await _admin(http, fleet, "POST", f"/sim/workers/{i}/faults", {"paused": False})
        assert await pending == [200]
        assert await asyncio.gather(*queued) == [200] * len(queued)
        assert "round_robin+overload_all" in await metrics_with(router, "overload_all")


async def _arrived(http: aiohttp.ClientSession, fleet: SimFleet, before: list[int]) -> bool:
    return sum(await _received(http, fleet)) > sum(before)


async def test_monitor_reads_the_engine_then_ages_a_failing_scrape_out(fleet: SimFleet):
    now = [100.0]
    url = fleet.workers[0]["url"]
    w, not_an_engine = Worker(url), Worker(fleet.admin_url)
    monitor = LoadMonitor(FAST, [w, not_an_engine], clock=lambda: now[0])
    async with aiohttp.ClientSession() as http:
        queued = await _hold_full(http, fleet, 0, 3)
        w.in_flight_requests = 2  # the router's own requests on it at scrape time
        for _ in range(200):
            await monitor.poll(http)
            if w.engine_load is not None and w.engine_load.waiting == 3:
                break
            await asyncio.sleep(0.05)
        assert w.engine_load is not None and (w.engine_load.running, w.engine_load.waiting) == (0, 3)
        assert w.engine_load.sampled_at == 100.0 and w.in_flight_at_sample == 2
        assert not_an_engine.engine_load is None  # its /metrics is a 404: no sample, no crash

        await _admin(http, fleet, "POST", "/sim/workers/0/faults", {"listening": False})
        now[0] += FAST.interval_secs
        await monitor.poll(http)
        assert w.engine_load is not None and w.engine_load.sampled_at == 100.0  # one failure: kept
        now[0] += STALE_AFTER_INTERVALS * FAST.interval_secs
        await monitor.poll(http)
        assert w.engine_load is None  # stale: dropped

        await _admin(http, fleet, "POST", "/sim/workers/0/faults", {"listening": True, "paused": False})
        await asyncio.gather(*queued, return_exceptions=True)  # dropped with the listener
        await monitor.poll(http)
        assert w.engine_load is not None and w.engine_load.sampled_at == now[0]
