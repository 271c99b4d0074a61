"""Fault suite, P/D disaggregation: prefill or decode leg failing, per engine protocol.

Two prefill and two decode `engine_sim` workers speak the vLLM (serial) or SGLang
(concurrent, bootstrap room) protocol behind a real router. A failing leg on one worker
must be retried on another pair; failing legs everywhere must end in a clear error
(never a 200 built on a failed prefill) with the sibling leg cancelled, so no engine is
left holding a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from testbed.sim_fleet import SimFleet, start_fleet
from tests.support.fault_harness import Router, body, launch_router, run_requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module", params=["vllm", "sglang"])
def protocol(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, protocol: str) -> Iterator[SimFleet]:
    f = start_fleet(
        tmp_path_factory.mktemp("pd"), "--prefill", "2", "--decode", "2", "--protocol", protocol, "--kv-wait-timeout-s", "5"
    )
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def router(fleet: SimFleet, protocol: str) -> Iterator[Router]:
    fleet.clear_faults()
    # --always-pair: every request must take both legs, so prefill faults are always hit.
    args = ["--pd-disaggregation", "--backend", protocol, "--policy", "round_robin", "--always-pair"]
    for w in fleet.workers:
        if w["role"] == "prefill":
            args += ["--prefill", w["url"], str(w["bootstrap_port"]) if w["bootstrap_port"] else "none"]
        else:
            args += ["--decode", w["url"]]
    args += [
        "--health-check-interval-secs", "0.5",
        "--worker-startup-check-interval", "0.1",
        "--cb-failure-threshold", "2",
        "--cb-success-threshold", "1",
        "--cb-timeout-duration-secs", "1",
        "--retry-max-retries", "3",
        "--retry-initial-backoff-ms", "10",
        "--retry-max-backoff-ms", "50",
    ]  # fmt: skip
    r = launch_router(*args, request_timeout=8.0)
    try:
        r.wait_all_ready()
        yield r
    finally:
        r.stop()
        fleet.clear_faults()


def _index(fleet: SimFleet, role: str, n: int) -> tuple[int, str]:
    w = [w for w in fleet.workers if w["role"] == role][n]
    return w["index"], w["url"]


def _breaker(router: Router, url: str) -> str:
    return router.worker(url)["breaker"]["state"]


def _assert_recovers(router: Router, fleet: SimFleet, url: str) -> None:
    fleet.clear_faults()

    def closed() -> bool:
        asyncio.run(run_requests(router, [body() for _ in range(2)])).assert_no_defects()
        return _breaker(router, url) == "closed"

    router.wait_for(f"breaker of {url} closes again", closed, attempts=60, pause=0.2)
    router.wait_idle()


def _engines_idle(fleet: SimFleet) -> bool:
    return fleet.stats()["totals"]["in_flight"] == 0


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_one_failing_leg_is_retried_on_another_pair(router: Router, fleet: SimFleet, role: str):
    index, url = _index(fleet, role, 0)
    fleet.set_faults(index, error_rate=1.0)
    tally = asyncio.run(run_requests(router, [body(stream=i % 2 == 0) for i in range(10)]))
    tally.assert_no_defects()
    assert tally.counts()["ok"] == 10, tally.outcomes
    assert _breaker(router, url) == "open"
    assert fleet.stats()["workers"][index]["injected_errors"] >= 2
    router.wait_idle()
    router.wait_for("no engine holds a request", lambda: _engines_idle(fleet))
    _assert_recovers(router, fleet, url)


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_leg_failing_everywhere_is_a_clear_error(router: Router, fleet: SimFleet, role: str):
    for n in range(2):
        fleet.set_faults(_index(fleet, role, n)[0], error_rate=1.0)
    tally = asyncio.run(run_requests(router, [body(stream=i % 2 == 0) for i in range(6)]))
    tally.assert_no_defects()
    assert tally.counts()["error"] == 6, tally.outcomes  # never a 200 built on a failed leg
    assert all(o.status is not None and o.status >= 500 for o in tally.outcomes), tally.outcomes
    router.wait_idle()
    # The healthy sibling legs were cancelled or finished: nothing waits for KV that never comes.
    router.wait_for("no engine holds a request", lambda: _engines_idle(fleet))
    _assert_recovers(router, fleet, _index(fleet, role, 0)[1])


def test_decode_dying_mid_stream(router: Router, fleet: SimFleet):
    index, url = _index(fleet, "decode", 0)
    fleet.set_faults(index, die_after_tokens=2)
    tally = asyncio.run(run_requests(router, [body(stream=True, max_tokens=12) for _ in range(8)]))
    tally.assert_no_defects()
    assert tally.counts()["error"] >= 1 and tally.counts()["ok"] >= 1, tally.outcomes
    assert _breaker(router, url) == "open"
    router.wait_idle()
    router.wait_for("no engine holds a request", lambda: _engines_idle(fleet))
    _assert_recovers(router, fleet, url)
