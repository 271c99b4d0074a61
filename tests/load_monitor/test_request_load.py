"""How load-based policies combine the engine's numbers with the router's own counts."""

from __future__ import annotations

import random

from router.config import PolicyConfig
from router.placement.types import RequestDescriptor
from router.policies.cache_aware import CacheAwarePolicy
from router.policies.kv_aware import KVAwarePolicy
from router.policies.kv_block_index import KVBlockIndex
from router.policies.least_load import LeastLoadPolicy
from router.policies.load import load_of, request_load
from router.policies.power_of_two import PowerOfTwoPolicy
from router.workers.engine_load import EngineLoad
from router.workers.worker import Worker


def worker(i: int, *, engine: int | None = None, own: int = 0, own_at_sample: int = 0, tokens: int = 0) -> Worker:
    w = Worker(f"http://10.0.0.{i}:8000")
    w.in_flight_requests, w.in_flight_tokens, w.in_flight_at_sample = own, tokens, own_at_sample
    if engine is not None:
        w.engine_load = EngineLoad(running=engine, waiting=0, kv_usage=0.1, sampled_at=0.0)
    return w


def req(text: str = "hello world") -> RequestDescriptor:
    return RequestDescriptor("r", None, text)


def test_without_a_sample_the_load_is_the_routers_own():
    assert request_load(worker(1, own=3)) == 3
    assert load_of(worker(1, own=3, tokens=40)) == (3, 40)


def test_engine_count_plus_what_this_router_sent_since_the_sample():
    # 10 on the engine (4 of them ours at the sample); we sent 2 more since.
    assert request_load(worker(1, engine=10, own=6, own_at_sample=4)) == 12
    # 3 of ours finished since the sample: the engine's count is that much too high now.
    assert request_load(worker(1, engine=10, own=1, own_at_sample=4)) == 7
    # Never below zero, whatever the order of finishes and scrapes.
    assert request_load(worker(1, engine=0, own=0, own_at_sample=2)) == 0


def test_two_replicas_with_the_same_engine_numbers_agree():
    # Another replica sent most of the traffic: its own counts differ, the engines' do not.
    busy_here = [worker(1, engine=2, own=2, own_at_sample=2), worker(2, engine=9)]
    quiet_here = [worker(1, engine=2), worker(2, engine=9, own=5, own_at_sample=5)]
    for fleet_view in (busy_here, quiet_here):
        assert LeastLoadPolicy(random.Random(0)).select_worker(fleet_view, req()).worker.url.endswith(".1:8000")


def test_least_load_and_power_of_two_avoid_the_engine_busy_worker():
    busy, idle = worker(1, engine=20), worker(2, engine=1, own=1, own_at_sample=1)
    assert LeastLoadPolicy(random.Random(0)).select_worker([busy, idle], req()).worker is idle
    p2 = PowerOfTwoPolicy(random.Random(0))
    assert {p2.select_worker([busy, idle], req()).worker for _ in range(10)} == {idle}


def test_cache_aware_balance_gate_reads_engine_load():
    config = PolicyConfig(balance_abs_threshold=4, balance_rel_threshold=1.5, cache_threshold=0.3)
    policy = CacheAwarePolicy(config)
    holder, other = worker(1), worker(2)
    assert policy.select_worker([holder, other], req("shared prefix text")).worker is holder
    assert policy.select_worker([holder, other], req("shared prefix text")).reason == "cache_hit"
    holder.engine_load = EngineLoad(running=8, waiting=4, kv_usage=0.5, sampled_at=0.0)
    chosen = policy.select_worker([holder, other], req("shared prefix text"))
    assert chosen.worker is other and chosen.reason == "balance_gate"


def test_kv_aware_load_score_is_relative_engine_load():
    policy = KVAwarePolicy(PolicyConfig(), KVBlockIndex(), random.Random(0))
    a, b = worker(1, engine=8), worker(2, engine=2)
    scores = policy.scores([a, b], RequestDescriptor("r", None, "x", routing_tokens=[1, 2, 3]))
    assert scores[a.worker_id][1] == 0.0 and scores[b.worker_id][1] == 0.75
