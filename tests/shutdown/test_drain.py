"""`router.drain.Drain`, the shutdown state the server, readiness and inference path share."""

from __future__ import annotations

import asyncio

import pytest

from router.drain import Drain
from router.errors import ShuttingDown


def test_a_draining_router_refuses_new_requests_and_keeps_counting_the_old():
    drain = Drain()
    drain.enter()
    drain.begin()
    with pytest.raises(ShuttingDown) as refused:
        drain.enter()
    assert refused.value.status == 503 and refused.value.code == "shutting_down"
    assert ("connection", "close") in refused.value.headers
    assert drain.in_flight == 1  # the refused request was never counted in


def test_wait_idle_returns_when_the_last_request_leaves():
    async def scenario() -> tuple[bool, int]:
        drain = Drain()
        drain.enter()
        drain.enter()
        drain.begin()
        waiter = asyncio.create_task(drain.wait_idle(60))
        await asyncio.sleep(0)  # let the waiter start waiting
        drain.leave()
        assert not waiter.done()
        drain.leave()
        return await waiter, drain.in_flight

    assert asyncio.run(scenario()) == (True, 0)


def test_wait_idle_reports_a_grace_period_that_ran_out():
    async def scenario() -> bool:
        drain = Drain()
        drain.enter()
        return await drain.wait_idle(0.01)

    assert asyncio.run(scenario()) is False


def test_wait_idle_with_nothing_in_flight_returns_at_once():
    assert asyncio.run(Drain().wait_idle(0)) is True
