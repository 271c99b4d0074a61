"""File discovery end to end: a real router (uvicorn, in process) over a simulated fleet
(real HTTP), its workers listed in a file the test rewrites while a client keeps sending.

Every request must get a 200 while workers are added, changed and removed; a removed
worker drains (GET /workers shows it draining while its slow requests finish, then it is
gone and gets nothing more); a broken file keeps the last good view.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine_sim.config import WorkerSpec as SimSpec
from router.config import DiscoveryConfig
from tests.discovery.conftest import SteadyClient, eventually, list_workers, sim_fleet, write_atomically
from tests.support.inprocess_router import loads_are_zero, make_config, running_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_add_change_remove_under_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="atom_mesh.discovery")
    path = tmp_path / "workers.json"
    async with sim_fleet(SimSpec(), SimSpec(), SimSpec()) as fleet:
        w0, w1, w2 = (w.url for w in fleet.workers)
        write_atomically(path, [{"url": w0}, {"url": w1}])
        config = make_config(workers=[], discovery=DiscoveryConfig(file=str(path)))
        async with running_router(config) as router:
            http = router.http

            async def by_url() -> dict[str, dict]:
                return {w["url"]: w for w in await list_workers(http, router.url)}

            async def ready(url: str, **expect: object) -> bool:
                w = (await by_url()).get(url)
                return w is not None and w["state"] == "ready" and all(w[k] == v for k, v in expect.items())

            await eventually(lambda: ready(w1), "both workers of the first file ready")
            client = SteadyClient(http, router.url)
            await eventually(lambda: client.sent_more_than(20), "traffic flowing")

            # Add: the new worker registers and takes requests.
            write_atomically(path, [{"url": w0}, {"url": w1}, {"url": w2}])
            await eventually(lambda: ready(w2), "added worker ready")

            async def w2_served() -> bool:
                return fleet.workers[2].stats.received > 0

            await eventually(w2_served, "added worker receives requests")

            # Change: a new spec for w1 is a fresh worker (drain old, add new).
            old_id = (await by_url())[w1]["id"]
            write_atomically(path, [{"url": w0}, {"url": w1, "labels": {"rev": "2"}}, {"url": w2}])
            await eventually(lambda: ready(w1, labels={"rev": "2"}), "changed worker re-registered")
            assert (await by_url())[w1]["id"] != old_id

            # Remove: w0 answers slowly, so it is seen draining with requests in flight.
            await fleet.workers[0].set_faults({"spike_rate": 1.0, "spike_ms": 1500.0})

            async def w0_busy() -> bool:
                w = (await by_url()).get(w0)
                return w is not None and w["in_flight_requests"] > 0

            await eventually(w0_busy, "slow worker has requests in flight")
            write_atomically(path, [{"url": w1, "labels": {"rev": "2"}}, {"url": w2}])

            async def w0_draining() -> bool:
                w = (await by_url()).get(w0)
                return w is not None and w["state"] == "draining" and w["in_flight_requests"] > 0

            await eventually(w0_draining, "removed worker draining with requests in flight")

            async def w0_gone() -> bool:
                return w0 not in await by_url()

            await eventually(w0_gone, "drained worker removed")
            received = fleet.workers[0].stats.received
            sent = len(client.statuses)
            await eventually(lambda: client.sent_more_than(sent + 40), "traffic after the removal")
            assert fleet.workers[0].stats.received == received, "a removed worker got new requests"
            await fleet.workers[0].set_faults({"spike_rate": 0.0})

            # Broken files: logged, and the last good view stays.
            write_atomically(path, '[{"url": ')

            async def logged(needle: str) -> bool:
                return any(needle in r.getMessage() for r in caplog.records)

            await eventually(lambda: logged("not valid JSON"), "unparsable file logged")
            write_atomically(path, [{"url": w1, "labels": {"rev": "2"}}, {"url": w2}, {"url": "ftp://nowhere"}])
            await eventually(lambda: logged("workers[2]: field 'url'"), "invalid entry logged with its index and field")
            assert sorted(await by_url()) == sorted([w1, w2])
            assert all(w["state"] == "ready" for w in (await by_url()).values())

            # A good file again is applied.
            write_atomically(path, [{"url": w0}, {"url": w1, "labels": {"rev": "2"}}, {"url": w2}])
            await eventually(lambda: ready(w0), "worker added back after the file was fixed")

            statuses = await client.stop()
            assert client.failures == []
            assert len(statuses) > 100 and set(statuses) == {200}

            async def idle() -> bool:
                return loads_are_zero(router)

            await eventually(idle, "router load counters back to zero")
