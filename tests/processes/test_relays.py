"""The router on several processes behaves as one router (router.processes).

A real router process with `--processes 3` (a coordinator and three relays) in front of a
real `engine_sim` fleet. Clients hold several keep-alive connections, and the test reads
from /proc which relay process owns each one, so every check below spans relays: a
decision made per relay instead of globally would break it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.sim_fleet import SimFleet, start_fleet
from tests.support.fault_harness import MODEL, Router, launch_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RELAYS = 3
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[SimFleet]:
    f = start_fleet(tmp_path_factory.mktemp("relays"), "--regular", "2")
    try:
        yield f
    finally:
        f.stop()


def _router(fleet: SimFleet, *args: str, urls: list[str] | None = None) -> Router:
    r = launch_router(
        "--worker-urls",
        *(urls or fleet.urls()),
        "--policy",
        "round_robin",
        "--processes",
        str(RELAYS),
        "--worker-startup-check-interval",
        "0.1",
        *args,
        request_timeout=10,
    )
    r.wait_all_ready()
    return r


def children(pid: int) -> list[int]:
    """Direct children of `pid` that are relay processes (not multiprocessing's helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def owner_of_connections(relays: list[int], port: int) -> dict[int, int]:
    """Client port -> pid of the relay holding that accepted connection to `port`."""
    by_inode = {inode: pid for pid in relays for inode in _socket_inodes(pid)}
    owners = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == port and fields[9] in by_inode:
            owners[remote_port] = by_inode[fields[9]]
    return owners


class SpreadClients:
    """Keep-alive connections to the router, opened until they sit on at least two relays."""

    def __init__(self, router: Router, *, want_relays: int = 2, max_connections: int = 40) -> None:
        self.router = router
        self.clients: list[httpx.Client] = []
        self.owner: list[int] = []
        relays = children(router.proc.pid)
        assert len(relays) == RELAYS, relays
        port = router.proc.port
        while len(self.clients) < max_connections:
            client = httpx.Client(base_url=router.url, timeout=15, limits=httpx.Limits(max_connections=1))
            client.get("/health").raise_for_status()  # opens (and keeps) its one connection
            self.clients.append(client)
            owners = owner_of_connections(relays, port)
            self.owner = [owners[self._client_port(c)] for c in self.clients]
            if len(self.clients) >= 4 and len(set(self.owner)) >= want_relays:
                break
        assert len(set(self.owner)) >= want_relays, f"connections all on one relay: {self.owner}"

    @staticmethod
    def _client_port(client: httpx.Client) -> int:
        # The one pooled connection's local port, as /proc/net/tcp names it.
        pool = client._transport._pool  # type: ignore[attr-defined]
        (conn,) = pool.connections
        stream = conn._connection._network_stream
        return stream.get_extra_info("socket").getsockname()[1]

    def post(self, i: int) -> httpx.Response:
        """Request `i` on connection `i` (round the connections)."""
        return self.clients[i % len(self.clients)].post("/v1/chat/completions", json=CHAT)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def _requests_total(text: str, status: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("atom_mesh_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_round_robin_is_one_rotation_and_metrics_one_sum(fleet: SimFleet):
    router = _router(fleet)
    spread = SpreadClients(router)
    try:
        served = []
        for i in range(24):
            r = spread.post(i)
            assert r.status_code == 200, r.text
            served.append(r.headers["x-atom-worker"])
        # One rotation for the whole router: strictly alternating, whichever relay served.
        assert all(served[i] != served[i + 1] for i in range(len(served) - 1)), served
        assert Counter(served) == Counter({u: 12 for u in fleet.urls()})
        metrics = httpx.get(f"{router.url}/metrics", timeout=10).text
        assert _requests_total(metrics, "200") == 24
        placements = [line for line in metrics.splitlines() if line.startswith("atom_mesh_placements_total{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in placements) == 24
        router.wait_idle()
    finally:
        spread.close()
        router.stop()


def test_concurrency_limit_holds_for_the_whole_router(tmp_path):
    # Every request holds its slot for 2 s, so the burst really overlaps.
    slow = start_fleet(tmp_path, "--regular", "1", "--spike-rate", "1", "--spike-ms", "2000")
    router = None
    try:
        router = _router(slow, "--max-concurrent-requests", "2", "--queue-size", "0", urls=slow.urls())
        spread = SpreadClients(router, want_relays=2)
        try:
            async def burst() -> list[int]:
                loop = asyncio.get_running_loop()
                calls = [
                    loop.run_in_executor(None, lambda c=c: c.post("/v1/chat/completions", json=CHAT).status_code)
                    for c in spread.clients[:6]
                ]
                return list(await asyncio.gather(*calls))

            statuses = Counter(asyncio.run(burst()))
        finally:
            spread.close()
        assert statuses[200] == 2 and statuses[429] == len(spread.clients[:6]) - 2, statuses
        router.wait_idle()
    finally:
        if router is not None:
            router.stop()
        slow.stop()


def test_breaker_opens_once_for_every_relay(tmp_path):
    bad = start_fleet(tmp_path, "--regular", "2", "--worker-faults", '{"0": {"error_rate": 1.0, "error_status": 500}}')
    router = None
    try:
        breaker = ("--disable-retries", "--cb-failure-threshold", "2", "--cb-timeout-duration-secs", "600")
        router = _router(bad, *breaker, urls=bad.urls())
        spread = SpreadClients(router)
        try:
            statuses = [spread.post(i).status_code for i in range(16)]
        finally:
            spread.close()
        # Round robin sends every other request to the failing worker until its one breaker
        # opens after 2 failures; breakers per relay would let each relay fail twice.
        assert statuses.count(500) == 2, statuses
        failing = router.worker(bad.urls()[0])
        assert failing is not None and failing["breaker"]["state"] == "open"
    finally:
        if router is not None:
            router.stop()
        bad.stop()


def test_drain_takes_effect_in_every_relay(fleet: SimFleet):
    router = _router(fleet)
    spread = SpreadClients(router)
    try:
        first, second = fleet.urls()
        worker = router.worker(first)
        assert worker is not None
        r = router.admin("POST", f"/workers/{worker['id']}/drain")
        assert r.status_code in (200, 202), r.text
        served = {spread.post(i).headers["x-atom-worker"] for i in range(12)}
        assert served == {second}
    finally:
        spread.close()
        router.stop()


def test_relay_killed_is_replaced_and_what_it_held_released(tmp_path):
    slow = start_fleet(tmp_path, "--regular", "1", "--step-overhead-ms", "200")
    router = None
    try:
        router = _router(slow, urls=slow.urls())
        spread = SpreadClients(router)
        victim_pid = spread.owner[0]
        try:
            stream = {**CHAT, "stream": True, "max_tokens": 50}
            with spread.clients[0].stream("POST", "/v1/chat/completions", json=stream) as r:
                assert r.status_code == 200
                router.wait_for("the stream holds load", lambda: router.workers()[0]["in_flight_requests"] == 1)
                os.kill(victim_pid, signal.SIGKILL)
        except httpx.HTTPError:
            pass  # the stream died with its relay, as it must
        finally:
            spread.close()
        router.wait_idle()  # the coordinator released the dead relay's hold
        pid = router.proc.pid
        router.wait_for(
            "a new relay replaces the dead one", lambda: len(children(pid)) == RELAYS and victim_pid not in children(pid)
        )
        ok = [httpx.post(f"{router.url}/v1/chat/completions", json=CHAT, timeout=15).status_code for _ in range(6)]
        assert ok == [200] * 6
    finally:
        if router is not None:
            router.stop()
        slow.stop()


def test_every_process_stops_with_the_router(fleet: SimFleet):
    router = _router(fleet)
    relays = children(router.proc.pid)
    assert len(relays) == RELAYS
    os.kill(router.proc.pid, signal.SIGTERM)
    assert _exit_code(router, 30) == 0
    _gone(relays)

    # A coordinator that is killed outright takes its relays with it (they lose their link).
    router = _router(fleet)
    relays = children(router.proc.pid)
    os.kill(router.proc.pid, signal.SIGKILL)
    assert _exit_code(router, 10) == -signal.SIGKILL
    _gone(relays)


def _exit_code(router: Router, within_secs: float) -> int:
    deadline = time.monotonic() + within_secs
    while (code := router.proc.poll()) is None:
        assert time.monotonic() < deadline, "the router did not exit"
        time.sleep(0.05)
    return code


def _gone(pids: list[int], within_secs: float = 15.0) -> None:
    deadline = time.monotonic() + within_secs
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"relay processes outlived the router: {alive}")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"
