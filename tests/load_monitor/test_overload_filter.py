"""Overload protection: the pure filter, and the planner using it (reasons, shed, P/D)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from router.config import DisaggConfig, LoadMonitorConfig
from router.errors import WorkerOverloadShedError
from router.placement.disagg_decider import DisaggRule
from router.placement.overload import OVERLOAD_ALL, OVERLOAD_FILTERED, filter_overloaded, is_overloaded
from router.placement.planner import Planner
from router.placement.types import Pair, RequestDescriptor, Single
from router.policies.least_load import LeastLoadPolicy
from router.policies.round_robin import RoundRobinPolicy
from router.workers.engine_load import EngineLoad
from router.workers.worker import Role, Worker

DEFAULTS = LoadMonitorConfig()


def worker(port: int, waiting: int | None = 0, kv: float = 0.0, running: int = 0, role: Role = Role.REGULAR) -> Worker:
    w = Worker(f"http://127.0.0.1:{port}", role=role)
    if waiting is not None:
        w.engine_load = EngineLoad(running=running, waiting=waiting, kv_usage=kv, sampled_at=0.0)
    return w


def req() -> RequestDescriptor:
    return RequestDescriptor("r", None, "hello", prompt_tokens=1000)


def test_thresholds_are_at_or_above_like_smg():
    assert DEFAULTS.overload_waiting_requests == 8 and DEFAULTS.overload_token_usage == 0.8
    assert not is_overloaded(worker(1, waiting=7, kv=0.79), DEFAULTS)
    assert is_overloaded(worker(1, waiting=8), DEFAULTS)
    assert is_overloaded(worker(1, kv=0.8), DEFAULTS)
    assert not is_overloaded(worker(1, waiting=None), DEFAULTS)  # no sample, no verdict


def test_overloaded_workers_are_dropped_while_another_has_room():
    full, kv_full, free = worker(1, waiting=20), worker(2, kv=0.95), worker(3, waiting=2)
    result = filter_overloaded([full, kv_full, free], DEFAULTS, "regular")
    assert result.workers == [free] and result.reason == OVERLOAD_FILTERED


def test_nothing_overloaded_leaves_the_candidates_and_no_reason():
    workers = [worker(1), worker(2, waiting=None)]
    result = filter_overloaded(workers, DEFAULTS, "regular")
    assert result.workers == workers and result.reason == ""


def test_all_overloaded_goes_to_the_least_loaded_by_engine_numbers():
    a, b, c = worker(1, waiting=12, running=4), worker(2, waiting=9, running=4), worker(3, waiting=30)
    b.in_flight_requests = 1  # this router's own requests count only as a change since the sample
    b.in_flight_at_sample = 1
    result = filter_overloaded([a, b, c], DEFAULTS, "regular")
    assert result.workers == [b] and result.reason == OVERLOAD_ALL


def test_all_overloaded_with_shed_is_a_503_retrying_after_one_interval():
    config = replace(DEFAULTS, overload_shed=True, interval_secs=2.0)
    with pytest.raises(WorkerOverloadShedError) as caught:
        filter_overloaded([worker(1, waiting=8), worker(2, kv=0.9)], config, "decode")
    err = caught.value
    assert err.status == 503 and err.code == "worker_overload_protection_shed"
    assert "every decode worker is overloaded" in err.message and err.headers == [("retry-after", "2")]


@pytest.mark.parametrize(
    "config", [replace(DEFAULTS, overload_protection=False), replace(DEFAULTS, enabled=False)], ids=["off", "no-monitor"]
)
def test_disabled_protection_changes_nothing(config):
    workers = [worker(1, waiting=50), worker(2)]
    assert filter_overloaded(workers, config, "regular").workers == workers


def test_planner_appends_the_overload_reason_to_the_policys():
    planner = Planner(RoundRobinPolicy(), RoundRobinPolicy(), RoundRobinPolicy())
    full, free1, free2 = worker(1, waiting=8), worker(2), worker(3)
    plans = [planner.plan(req(), [full, free1, free2], pd=False, now=0.0) for _ in range(4)]
    assert all(isinstance(p, Single) and p.worker is not full for p in plans)
    assert {p.worker for p in plans} == {free1, free2}
    assert {p.reason for p in plans} == {"round_robin+overload_filtered"}
    full.engine_load = EngineLoad(running=0, waiting=0, kv_usage=0.0, sampled_at=1.0)
    assert planner.plan(req(), [full, free1, free2], pd=False, now=1.0).reason == "round_robin"


def test_planner_shed_raises_before_any_policy_runs():
    policy = RoundRobinPolicy()
    planner = Planner(policy, RoundRobinPolicy(), RoundRobinPolicy(), load=replace(DEFAULTS, overload_shed=True))
    workers = [worker(1, waiting=8), worker(2, waiting=9)]
    with pytest.raises(WorkerOverloadShedError):
        planner.plan(req(), workers, pd=False, now=0.0)
    for w in workers:
        w.engine_load = None
    # The refused request did not advance the rotation: the next pick is still its first.
    assert planner.plan(req(), workers, pd=False, now=0.0).worker is workers[0]


def test_pd_shed_of_every_prefill_worker_goes_decode_only_where_the_backend_can():
    load = replace(DEFAULTS, overload_shed=True)
    prefill = worker(1, waiting=10, role=Role.PREFILL)
    decode = worker(2, role=Role.DECODE)
    conditional = Planner(
        RoundRobinPolicy(),
        RoundRobinPolicy(),
        LeastLoadPolicy(random.Random(0)),
        DisaggRule(DisaggConfig(), decode_only_capable=True),
        load=load,
    )
    plan = conditional.plan(req(), [prefill, decode], pd=True, now=0.0)
    assert isinstance(plan, Single) and plan.worker is decode
    always_pair = Planner(RoundRobinPolicy(), RoundRobinPolicy(), RoundRobinPolicy(), load=load)
    with pytest.raises(WorkerOverloadShedError, match="every prefill worker"):
        always_pair.plan(req(), [prefill, decode], pd=True, now=0.0)
    prefill.engine_load = None
    assert isinstance(always_pair.plan(req(), [prefill, decode], pd=True, now=0.0), Pair)
