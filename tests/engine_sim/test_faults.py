"""Fault knobs as the router's fault suite uses them, and the counters that prove cancellation."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from engine_sim.config import FaultConfig, WorkerSpec
from engine_sim.faults import FaultDecision, decide
from tests.engine_sim.conftest import running_fleet

BODY = {"prompt": "one two three four five", "max_tokens": 6}


async def settle(worker, **expected):
    """Wait until the worker's counters reach `expected` (disconnects are noticed asynchronously)."""
    for _ in range(200):
        snap = worker.snapshot()
        if all(snap[k] == v for k, v in expected.items()):
            return snap
        await asyncio.sleep(0.02)
    raise AssertionError(f"counters never reached {expected}: {worker.snapshot()}")


async def test_error_rate_answers_the_configured_status(http):
    async with running_fleet(WorkerSpec(faults=FaultConfig(error_rate=1.0, error_status=503))) as fleet:
        worker = fleet.workers[0]
        async with http.post(f"{worker.url}/v1/completions", json=BODY) as r:
            assert r.status == 503
            assert "injected fault" in (await r.json())["error"]["message"]
        assert worker.snapshot()["injected_errors"] == 1


async def test_hang_is_counted_as_cancelled_when_the_client_gives_up(http):
    async with running_fleet(WorkerSpec(faults=FaultConfig(hang_rate=1.0))) as fleet:
        worker = fleet.workers[0]
        with pytest.raises(asyncio.TimeoutError):
            await http.post(f"{worker.url}/v1/completions", json=BODY, timeout=aiohttp.ClientTimeout(total=0.3))
        await settle(worker, hung=1, cancelled=1, in_flight=0)


async def test_client_disconnect_mid_stream_aborts_the_engine_request(http):
    async with running_fleet(WorkerSpec()) as fleet:
        worker = fleet.workers[0]
        resp = await http.post(f"{worker.url}/v1/completions", json={**BODY, "max_tokens": 500, "stream": True})
        await resp.content.readline()  # the first token arrived
        resp.close()  # drop the connection
        snap = await settle(worker, cancelled=1, aborted_requests=1, running=0)
        assert snap["completed"] == 0 and snap["kv_usage"] == 0.0


async def test_die_after_tokens_cuts_the_stream(http):
    async with running_fleet(WorkerSpec(faults=FaultConfig(die_after_tokens=2))) as fleet:
        worker = fleet.workers[0]
        chunks = []
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.post(f"{worker.url}/v1/completions", json={**BODY, "stream": True}) as r:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        chunks.append(line)
        assert len(chunks) == 2
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await http.post(f"{worker.url}/v1/completions", json=BODY)
        await settle(worker, died=2, completed=0, in_flight=0)


async def test_runtime_knobs_stop_listening_and_health(http):
    async with running_fleet(WorkerSpec(), admin_port=0) as fleet:
        worker = fleet.workers[0]
        admin = f"{fleet.admin_url}/sim/workers/0/faults"
        async with http.post(admin, json={"listening": False}) as r:
            assert (await r.json())["listening"] is False
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(f"{worker.url}/health")
        async with http.post(admin, json={"listening": True, "unhealthy": True}) as r:
            assert r.status == 200
        async with http.get(f"{worker.url}/health") as r:
            assert r.status == 503
        async with http.post(f"{worker.url}/sim/faults", json={"unhealthy": False, "spike_rate": 1.0, "spike_ms": 50}) as r:
            assert (await r.json())["spike_ms"] == 50
        async with http.post(f"{worker.url}/v1/completions", json=BODY) as r:
            assert r.status == 200
        async with http.post(admin, json={"no_such_knob": 1}) as r:
            assert r.status == 400 and "known" in (await r.json())["error"]["message"]
        async with http.post(admin, json={"error_rate": 2}) as r:
            assert r.status == 400
        async with http.post(f"{fleet.admin_url}/sim/workers/9/faults", json={}) as r:
            assert r.status == 404


async def test_listening_false_drops_open_connections(http):
    async with running_fleet(WorkerSpec()) as fleet:
        worker = fleet.workers[0]
        pending = asyncio.create_task(http.post(f"{worker.url}/v1/completions", json={**BODY, "max_tokens": 5000}))
        await settle(worker, running=1)
        await worker.set_faults({"listening": False})
        with pytest.raises(aiohttp.ClientError):
            await pending
        await settle(worker, cancelled=1, running=0)


async def test_a_worker_told_to_stop_listening_on_its_own_port_still_answers(http):
    async with running_fleet(WorkerSpec()) as fleet:
        worker = fleet.workers[0]
        # "Connection: close": the kept admin connection must not be reused for the check below.
        async with http.post(f"{worker.url}/sim/faults", json={"listening": False}, headers={"Connection": "close"}) as r:
            assert r.status == 200 and (await r.json())["listening"] is False
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(f"{worker.url}/health")


def test_fault_draws_are_reproducible():
    cfg = FaultConfig(error_rate=0.3, spike_rate=0.5, spike_ms=10)

    def draws(seed: int) -> list[FaultDecision]:
        rng = random.Random(seed)
        return [decide(cfg, rng) for _ in range(50)]

    assert draws(7) == draws(7) and draws(7) != draws(8)
    kinds = draws(7)
    assert any(d.error_status == 500 for d in kinds)
    assert any(d.delay_s == 0.01 for d in kinds)
    assert any(d == FaultDecision() for d in kinds)
