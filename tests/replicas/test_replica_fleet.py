"""Two router replicas (real processes) in front of one simulated fleet, a round-robin client.

The acceptance criteria of issue 14's replicas item, on the simulator's own counters (cached
/ prompt tokens): kv_aware's hit rate with two replicas within 3 points of one router;
cache_aware's within 3 points with the Redis tree sync, and lower without it. And the
Redis-backed rate limit is one limit for both replicas.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.compare_routers import Options, build_workload
from benchmarks.replicas import Setup, difference_points, run_setup
from testbed.redis_server import RedisServer
from testbed.router_process import start_router
from testbed.sim_fleet import SimFleet, start_fleet
from tests.replicas.conftest import require_redis

pytestmark = pytest.mark.slow
TOLERANCE_POINTS = 3.0  # the acceptance criterion


def _options() -> Options:
    # 8 groups x 16 prompts at 32 req/s: 4 s per run; one request more or less cached
    # moves the hit rate by under a point, well inside the 3-point tolerance. Seeds 0-2 at
    # 32 req/s gave the hit rates of 16 req/s (kv_aware 1 and 2 replicas equal; cache_aware
    # 88.2% with one router or synced replicas, 83.8-84.6% unsynced) in two thirds the time.
    return Options(routers=[], workloads=["shared-prefix"], scale=1.0, rate=32.0)


def _hit_rates(policy: str, setups: list[Setup]) -> list[dict]:
    opts = _options()
    workload = build_workload("shared-prefix", opts)
    runs = [run_setup(policy, workload, setup, opts) for setup in setups]
    for run in runs:
        assert run["summary"]["failed"] == 0, run["summary"]["errors"]
        print(f"{policy} {run['setup']}: hit rate {100 * run['fleet']['cache_hit_rate']:.1f}%")
    return runs


def test_kv_aware_two_replicas_hit_as_well_as_one_router():
    one, two = _hit_rates("kv_aware", [Setup(1), Setup(2)])
    assert abs(difference_points(two, one)) <= TOLERANCE_POINTS


def test_cache_aware_replicas_need_the_redis_tree_sync():
    require_redis()
    one, unsynced, synced = _hit_rates("cache_aware", [Setup(1), Setup(2), Setup(2, redis=True)])
    assert abs(difference_points(synced, one)) <= TOLERANCE_POINTS
    # Without the sync each replica's tree sees half the traffic: groups start twice over.
    assert unsynced["fleet"]["cache_hit_rate"] < synced["fleet"]["cache_hit_rate"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SimFleet]:
    sim = start_fleet(tmp_path, "--regular", "2")
    try:
        yield sim
    finally:
        sim.stop()


def _post(url: str) -> tuple[int, dict]:
    body = json.dumps({"model": "sim-model", "prompt": "hello", "max_tokens": 2}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _wait_ready(url: str, within_s: float = 30.0) -> None:
    """Until the router has a ready worker (a request before that would spend a token on a 503)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(url + "/readiness", timeout=5):
                return
        except urllib.error.URLError:
            assert time.monotonic() < deadline, f"{url} never became ready"
            time.sleep(0.05)


def test_redis_rate_limit_is_one_limit_for_both_replicas(fleet: SimFleet, redis_server: RedisServer):
    rate = 0.01  # a burst of 1 token, the next one due in 100 s
    flags = ["--worker-urls", *fleet.urls(), "--policy", "round_robin"]
    flags += ["--rate-limit-tokens-per-second", str(rate), "--redis-url", redis_server.url]
    routers = [start_router(*flags, name=f"replica-{i}") for i in range(2)]
    try:
        for router in routers:
            _wait_ready(router.url)
        started = time.monotonic()
        answers = [_post(routers[i % 2].url) for i in range(6)]
        elapsed = time.monotonic() - started
    finally:
        for router in routers:
            router.stop(grace=5.0)
    admitted = [status for status, _ in answers if status == 200]
    # The bucket's bound over the window: its burst plus what refilled meanwhile.
    assert len(admitted) <= 1 + rate * elapsed
    assert answers[0][0] == 200
    # Replica 1's own bucket would have been full: its 429 is the shared bucket's.
    assert answers[1][0] == 429 and answers[1][1]["error"]["code"] == "rate_limited"
