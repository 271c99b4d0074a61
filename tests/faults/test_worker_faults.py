"""Fault suite, co-located workers: a real router process in front of a real `engine_sim` fleet.

Each test injects one fault into worker 0 of two, sends a bounded batch of requests and
counts how each ended (`tests.support.fault_harness`): every request must end in a complete
answer or a clear OpenAI error, never hang past the timeout or be cut silently; the
router's in-flight counters (GET /workers) return to zero; the faulty worker's breaker
opens and, once the fault is lifted, recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from testbed.sim_fleet import SimFleet, start_fleet
from tests.support.fault_harness import Router, body, launch_router, run_requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[SimFleet]:
    f = start_fleet(tmp_path_factory.mktemp("fleet"), "--regular", "2", "--seed", "7")
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def router(fleet: SimFleet, request) -> Iterator[Router]:
    """A fresh router per test (clean breakers and counters) over the shared fleet."""
    fleet.clear_faults()
    timeout = getattr(request, "param", 4.0)
    r = launch_router(
        "--worker-urls",
        *fleet.urls(),
        "--policy",
        "round_robin",
        "--health-check-interval-secs",
        "0.3",
        "--health-failure-threshold",
        "2",
        "--health-success-threshold",
        "1",
        "--health-check-timeout-secs",
        "1",
        "--worker-startup-check-interval",
        "0.1",
        "--cb-failure-threshold",
        "3",
        "--cb-success-threshold",
        "1",
        "--cb-timeout-duration-secs",
        "1",
        "--retry-max-retries",
        "2",
        "--retry-initial-backoff-ms",
        "10",
        "--retry-max-backoff-ms",
        "50",
        request_timeout=timeout,
    )
    try:
        r.wait_all_ready()
        yield r
    finally:
        r.stop()
        fleet.clear_faults()


def _breaker(router: Router, url: str) -> str:
    w = router.worker(url)
    return w["breaker"]["state"] if w else "gone"


def _assert_recovers(router: Router, fleet: SimFleet, url: str) -> None:
    """Lift every fault; within a bounded number of rounds the breaker closes again."""
    fleet.clear_faults()

    def closed() -> bool:
        asyncio.run(run_requests(router, [body() for _ in range(2)])).assert_no_defects()
        return _breaker(router, url) == "closed"

    router.wait_for(f"breaker of {url} closes again", closed, attempts=60, pause=0.2)
    router.wait_idle()


def test_worker_returning_5xx_is_retried_and_its_breaker_opens(router: Router, fleet: SimFleet):
    bad = fleet.urls()[0]
    fleet.set_faults(0, error_rate=1.0, error_status=503)
    tally = asyncio.run(run_requests(router, [body(stream=i % 2 == 0) for i in range(12)]))
    tally.assert_no_defects()
    assert tally.counts()["ok"] == 12, tally.outcomes  # retries land on the healthy worker
    assert _breaker(router, bad) == "open"
    assert fleet.stats()["workers"][0]["injected_errors"] >= 3
    router.wait_idle()
    _assert_recovers(router, fleet, bad)


@pytest.mark.parametrize("router", [2.0], indirect=True)
def test_hanging_worker_times_out_cleanly(router: Router, fleet: SimFleet):
    bad = fleet.urls()[0]
    fleet.set_faults(0, hang_rate=1.0)
    tally = asyncio.run(run_requests(router, [body() for _ in range(8)], concurrency=8))
    tally.assert_no_defects()
    errors = [o for o in tally.outcomes if o.kind == "error"]
    assert errors and all(o.status == 504 and "no answer within" in o.detail for o in errors), tally.outcomes
    assert tally.counts()["ok"] >= 1
    assert _breaker(router, bad) == "open"
    router.wait_idle()
    # The router closed its upstream connections: the simulated engine saw them go away.
    router.wait_for("hung requests cancelled upstream", lambda: fleet.stats()["workers"][0]["in_flight"] == 0)
    _assert_recovers(router, fleet, bad)


def test_slow_worker_still_answers(router: Router, fleet: SimFleet):
    fleet.set_faults(0, spike_rate=1.0, spike_ms=400)
    tally = asyncio.run(run_requests(router, [body(stream=i % 2 == 0) for i in range(8)], concurrency=8))
    assert tally.counts()["ok"] == 8, tally.outcomes
    assert all(_breaker(router, u) == "closed" for u in fleet.urls())
    router.wait_idle()


def test_worker_dying_mid_stream_ends_streams_with_an_error_event(router: Router, fleet: SimFleet):
    bad = fleet.urls()[0]
    fleet.set_faults(0, die_after_tokens=2)
    streams = asyncio.run(run_requests(router, [body(stream=True, max_tokens=16) for _ in range(8)]))
    streams.assert_no_defects()
    cut = [o for o in streams.outcomes if o.kind == "error"]
    assert cut, streams.outcomes  # bytes had reached the client: no retry, an explicit error event
    assert streams.counts()["ok"] >= 1
    # Whole (non-stream) answers are read before anything is sent: retried elsewhere.
    whole = asyncio.run(run_requests(router, [body(max_tokens=16) for _ in range(6)]))
    assert whole.counts()["ok"] == 6, whole.outcomes
    assert _breaker(router, bad) == "open"
    router.wait_idle()
    _assert_recovers(router, fleet, bad)


def test_worker_killed_under_load(router: Router, fleet: SimFleet):
    """The engine process 'crashes' (stops listening, drops its connections) mid-stream."""
    bad = fleet.urls()[0]

    async def scenario():
        load = asyncio.ensure_future(run_requests(router, [body(stream=True, max_tokens=300) for _ in range(6)], concurrency=6))
        for _ in range(200):  # bounded: wait until streams are running on the doomed worker
            if fleet.stats()["workers"][0]["in_flight"] > 0:
                break
            await asyncio.sleep(0.02)
        fleet.set_faults(0, listening=False)
        return await load

    during = asyncio.run(scenario())
    during.assert_no_defects()
    assert during.counts()["error"] >= 1, during.outcomes
    after = asyncio.run(run_requests(router, [body() for _ in range(8)]))
    assert after.counts()["ok"] == 8, after.outcomes  # connection refused -> retried elsewhere
    router.wait_for("health checks mark the dead worker not ready", lambda: router.worker(bad)["state"] == "not_ready")
    assert _breaker(router, bad) == "open"
    router.wait_idle()
    fleet.set_faults(0, listening=True)
    router.wait_for("the restarted worker is ready again", lambda: router.worker(bad)["state"] == "ready")
    _assert_recovers(router, fleet, bad)


def test_client_disconnect_cancels_upstream_and_releases_counters(router: Router, fleet: SimFleet):
    before = fleet.stats()["totals"]["cancelled"]
    tally = asyncio.run(
        run_requests(router, [body(stream=True, max_tokens=400) for _ in range(6)], concurrency=6, disconnect_after_chunks=2)
    )
    tally.assert_no_defects()
    router.wait_idle()
    router.wait_for(
        "every abandoned request was cancelled in the engine",
        lambda: fleet.stats()["totals"]["cancelled"] - before >= 6 and fleet.stats()["totals"]["in_flight"] == 0,
    )
    assert all(_breaker(router, u) == "closed" for u in fleet.urls())  # a client leaving is not a worker fault


@pytest.mark.parametrize("how", ["drain", "delete"])
def test_worker_removed_under_load_loses_no_request(router: Router, fleet: SimFleet, how: str):
    target = router.worker(fleet.urls()[0])
    assert target is not None

    async def scenario():
        load = asyncio.ensure_future(run_requests(router, [body(stream=True, max_tokens=200) for _ in range(8)], concurrency=8))
        for _ in range(200):
            w = router.worker(target["url"])
            if w and w["in_flight_requests"] > 0:
                break
            await asyncio.sleep(0.02)
        if how == "drain":
            r = router.admin("POST", f"/workers/{target['id']}/drain")
            assert r.status_code == 202 and r.json()["state"] == "draining"
            assert r.json()["in_flight_requests"] > 0  # it really was drained under load
        else:
            assert router.admin("DELETE", f"/workers/{target['id']}").status_code == 200
        return await load

    tally = asyncio.run(scenario())
    assert tally.counts()["ok"] == 8, tally.outcomes  # in-flight requests all finished
    router.wait_for("worker left the registry", lambda: router.worker(target["url"]) is None)
    received = fleet.stats()["workers"][0]["received"]
    after = asyncio.run(run_requests(router, [body() for _ in range(4)]))
    assert after.counts()["ok"] == 4
    assert fleet.stats()["workers"][0]["received"] == received  # no new request reached it
    router.wait_idle()
