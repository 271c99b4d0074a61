"""Routing policies: each one's decision rule, determinism under a seed, and per-worker state."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.config import PolicyConfig
from router.placement.types import RequestDescriptor
from router.policies.cache_aware import CacheAwarePolicy
from router.policies.consistent_hash import ConsistentHashPolicy
from router.policies.kv_block_index import KVBlockIndex
from router.policies.least_load import LeastLoadPolicy
from router.policies.power_of_two import PowerOfTwoPolicy
from router.policies.random_policy import RandomPolicy
from router.policies.registry import POLICIES, create_policy
from router.policies.round_robin import RoundRobinPolicy
from router.policies.session import SessionPolicy
from router.workers.worker import Worker


def make_workers(n: int, loads: list[int] | None = None, tokens: list[int] | None = None) -> list[Worker]:
    workers = [Worker(f"http://10.0.0.{i}:8000") for i in range(n)]
    for i, w in enumerate(workers):
        w.in_flight_requests = loads[i] if loads else 0
        w.in_flight_tokens = tokens[i] if tokens else 0
    return workers


def req(text: str = "", *, tokens: list[int] | None = None, session: str | None = None) -> RequestDescriptor:
    return RequestDescriptor("r", None, text, routing_tokens=tokens, session_key=session)


def picks(policy, workers, requests) -> list[Worker]:
    return [policy.select_worker(workers, r).worker for r in requests]


# --- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICIES)
def test_every_configured_name_builds_a_working_policy(name: str) -> None:
    policy = create_policy(name, PolicyConfig(), random.Random(0), KVBlockIndex())
    assert policy.name == name
    workers = make_workers(3)
    selection = policy.select_worker(workers, req("hello", session="s"))
    assert selection.worker in workers and selection.reason


def test_unknown_policy_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as e:
        create_policy("fastest", PolicyConfig(), random.Random(0))
    assert "fastest" in str(e.value)
    for name in POLICIES:
        assert name in str(e.value)


def test_prefix_hash_and_consistent_hashing_are_the_same_policy() -> None:
    a = create_policy("prefix_hash", PolicyConfig(), random.Random(0))
    b = create_policy("consistent_hashing", PolicyConfig(), random.Random(0))
    assert type(a) is type(b) is ConsistentHashPolicy


# --- random / round robin ------------------------------------------------------------------


def test_random_spreads_evenly_and_repeats_under_a_seed() -> None:
    workers = make_workers(3)
    chosen = picks(RandomPolicy(random.Random(7)), workers, [req()] * 3000)
    counts = Counter(chosen)
    assert all(800 < counts[w] < 1200 for w in workers), counts
    assert chosen == picks(RandomPolicy(random.Random(7)), workers, [req()] * 3000)
    assert chosen != picks(RandomPolicy(random.Random(8)), workers, [req()] * 3000)


def test_round_robin_cycles_in_order_ignoring_load() -> None:
    workers = make_workers(3, loads=[50, 0, 0])
    policy = RoundRobinPolicy()
    assert picks(policy, workers, [req()] * 7) == [workers[i % 3] for i in range(7)]
    assert policy.select_worker(workers, req()).reason == "round_robin"


# --- power of two / least load -------------------------------------------------------------


def test_power_of_two_never_picks_the_most_loaded_and_favours_the_least() -> None:
    workers = make_workers(3, loads=[0, 5, 10])
    policy = PowerOfTwoPolicy(random.Random(1))
    counts = Counter(picks(policy, workers, [req()] * 3000))
    assert counts[workers[2]] == 0  # any pair holding it holds a less loaded worker
    # The idle worker wins whenever sampled: 2 of the 3 pairs.
    assert 1800 < counts[workers[0]] < 2200, counts
    assert policy.select_worker(workers, req()).reason == "power_of_two"


def test_power_of_two_with_one_worker_and_tokens_as_tie_break() -> None:
    single = make_workers(1)
    assert PowerOfTwoPolicy(random.Random(0)).select_worker(single, req()).worker is single[0]
    workers = make_workers(2, loads=[3, 3], tokens=[900, 10])
    counts = Counter(picks(PowerOfTwoPolicy(random.Random(0)), workers, [req()] * 50))
    assert counts == {workers[1]: 50}


def test_least_load_orders_by_requests_then_tokens() -> None:
    policy = LeastLoadPolicy(random.Random(0))
    workers = make_workers(3, loads=[4, 2, 3])
    assert policy.select_worker(workers, req()).worker is workers[1]
    workers = make_workers(3, loads=[2, 2, 3], tokens=[500, 100, 0])
    selection = policy.select_worker(workers, req())
    assert selection.worker is workers[1] and selection.reason == "least_load"


def test_least_load_spreads_exact_ties_with_its_rng() -> None:
    workers = make_workers(3)
    chosen = picks(LeastLoadPolicy(random.Random(3)), workers, [req()] * 300)
    assert set(chosen) == set(workers)
    assert chosen == picks(LeastLoadPolicy(random.Random(3)), workers, [req()] * 300)


# --- cache aware ---------------------------------------------------------------------------

SYSTEM = "You are a helpful assistant that answers questions about geography. " * 3


def cache_aware(**overrides) -> CacheAwarePolicy:
    return CacheAwarePolicy(PolicyConfig(**overrides))


def test_cache_aware_sends_a_shared_prefix_back_and_new_prefixes_to_the_smallest_tree() -> None:
    policy = cache_aware()
    workers = make_workers(2)
    first = policy.select_worker(workers, req(SYSTEM + "Q: capital of France?"))
    assert first.reason == "smallest_tree"
    again = policy.select_worker(workers, req(SYSTEM + "Q: capital of Peru?"))
    assert again.worker is first.worker and again.reason == "cache_hit"
    other = policy.select_worker(workers, req("Translate to German: good morning"))
    assert other.worker is not first.worker and other.reason == "smallest_tree"
    back = policy.select_worker(workers, req("Translate to German: good night"))
    assert back.worker is other.worker and back.reason == "cache_hit"


def test_cache_aware_needs_a_match_rate_strictly_above_the_threshold() -> None:
    policy = cache_aware(cache_threshold=0.5)
    workers = make_workers(2)
    home = policy.select_worker(workers, req("abcd")).worker
    at_threshold = policy.select_worker(workers, req("abcdwxyz"))  # 4/8 = 0.5
    assert at_threshold.reason == "smallest_tree" and at_threshold.worker is not home
    above = policy.select_worker(workers, req("abcdqrs"))  # 4/7 > 0.5
    assert above.reason == "cache_hit" and above.worker is home


@pytest.mark.parametrize(
    ("home_load", "other_load", "gated"),
    [
        (100, 0, True),  # both thresholds exceeded
        (60, 0, False),  # relative exceeded, absolute not (60 - 0 <= 64)
        (300, 220, False),  # absolute exceeded (80 > 64), relative not (300 <= 1.5 * 220)
        (200, 130, True),  # both exceeded: 70 > 64 and 200 > 195
    ],
)
def test_cache_aware_balance_gate(home_load: int, other_load: int, gated: bool) -> None:
    policy = cache_aware(balance_abs_threshold=64, balance_rel_threshold=1.5)
    workers = make_workers(2)
    home = policy.select_worker(workers, req(SYSTEM + "first")).worker
    other = workers[1] if home is workers[0] else workers[0]
    home.in_flight_requests, other.in_flight_requests = home_load, other_load
    selection = policy.select_worker(workers, req(SYSTEM + "second"))
    if gated:
        assert (selection.worker, selection.reason) == (other, "balance_gate")
        # The text went into the chosen worker's tree: it now matches there too.
        assert policy.tree.prefix_match(SYSTEM + "second", {other.worker_id}).length == len(SYSTEM + "second")
    else:
        assert (selection.worker, selection.reason) == (home, "cache_hit")


def test_cache_aware_uses_token_ids_when_the_router_tokenizes() -> None:
    policy = cache_aware()
    workers = make_workers(2)
    prompt = list(range(100, 140))
    home = policy.select_worker(workers, req("text one", tokens=prompt + [1])).worker
    # Different text, same token prefix: the tokens decide.
    hit = policy.select_worker(workers, req("completely different", tokens=prompt + [2]))
    assert hit.worker is home and hit.reason == "cache_hit"


def test_cache_aware_only_matches_candidates() -> None:
    policy = cache_aware()
    workers = make_workers(3)
    home = policy.select_worker(workers, req(SYSTEM + "a")).worker
    others = [w for w in workers if w is not home]
    selection = policy.select_worker(others, req(SYSTEM + "b"))
    assert selection.worker in others and selection.reason == "smallest_tree"


def test_cache_aware_tree_stays_bounded_and_forgets_removed_workers() -> None:
    policy = cache_aware(max_tree_size=500)
    workers = make_workers(3)
    rng = random.Random(5)
    for i in range(300):
        text = f"{rng.choice(['alpha', 'beta', 'gamma'])} conversation {i} " + "x" * rng.randint(0, 40)
        policy.select_worker(workers, req(text))
        assert policy.tree.total_size <= 500
    assert policy.evict(now=123.0) == 0  # inserts already keep the bound
    home = policy.select_worker(workers, req(SYSTEM + "q1")).worker
    policy.on_worker_removed(home)
    assert policy.tree.tenant_size(home.worker_id) == 0
    rest = [w for w in workers if w is not home]
    assert policy.select_worker(rest, req(SYSTEM + "q2")).reason == "smallest_tree"


def test_cache_aware_handles_an_empty_routing_text() -> None:
    policy = cache_aware()
    workers = make_workers(2)
    assert policy.select_worker(workers, req("")).reason == "smallest_tree"


# --- consistent hashing with bounded load ----------------------------------------------------


def hashing(**overrides) -> ConsistentHashPolicy:
    return ConsistentHashPolicy(PolicyConfig(**overrides))


def test_hash_is_stable_across_instances_and_spreads_keys() -> None:
    workers = make_workers(4)
    texts = [f"user {i}: tell me a story" for i in range(4000)]
    chosen = picks(hashing(), workers, [req(t) for t in texts])
    assert chosen == picks(hashing(), workers, [req(t) for t in texts])
    counts = Counter(chosen)
    assert all(600 < counts[w] < 1400 for w in workers), counts


def test_hash_keys_on_the_prefix_or_the_session() -> None:
    policy = hashing(prefix_key_length=16)
    workers = make_workers(5)
    base = policy.select_worker(workers, req("0123456789abcdef and then anything"))
    assert base.reason == "hash"
    same_prefix = {policy.select_worker(workers, req("0123456789abcdef" + str(i))).worker for i in range(20)}
    assert same_prefix == {base.worker}
    sessions = {policy.select_worker(workers, req(f"turn {i}", session="alice")).worker for i in range(20)}
    assert len(sessions) == 1
    tokens = {policy.select_worker(workers, req(f"t{i}", tokens=list(range(16)) + [i])).worker for i in range(20)}
    assert len(tokens) == 1


def test_removing_a_worker_moves_only_its_own_keys() -> None:
    policy = hashing()
    workers = make_workers(5)
    texts = [f"prompt number {i}" for i in range(1000)]
    before = picks(policy, workers, [req(t) for t in texts])
    gone = workers[2]
    policy.on_worker_removed(gone)
    rest = [w for w in workers if w is not gone]
    after = picks(policy, rest, [req(t) for t in texts])
    for b, a in zip(before, after, strict=True):
        if b is not gone:
            assert a is b
    assert any(b is gone for b in before)


def test_bounded_load_walks_past_a_full_worker() -> None:
    policy = hashing(hash_load_factor=1.25)
    workers = make_workers(3)
    home = policy.select_worker(workers, req("hot prefix")).worker
    # total 5, capacity ceil(1.25 * 6 / 3) = 3: the home worker (5) is full.
    home.in_flight_requests = 5
    overflow = policy.select_worker(workers, req("hot prefix"))
    assert overflow.reason == "hash_overflow" and overflow.worker is not home
    # Deterministic: the next worker clockwise, every time.
    assert policy.select_worker(workers, req("hot prefix")).worker is overflow.worker
    # total 1: capacity ceil(1.25 * 2 / 3) = 1, so even 1 in flight is full.
    home.in_flight_requests = 1
    assert policy.select_worker(workers, req("hot prefix")).reason == "hash_overflow"
    # total 2 spread evenly: capacity ceil(1.25 * 3 / 3) = 2, and home (1) has room.
    overflow.worker.in_flight_requests = 1
    stays = policy.select_worker(workers, req("hot prefix"))
    assert (stays.worker, stays.reason) == (home, "hash")


def test_bounded_load_keeps_every_worker_within_capacity_under_one_hot_key() -> None:
    policy = hashing(hash_load_factor=1.25)
    workers = make_workers(4)
    for _ in range(400):  # requests pile up, none finishes
        policy.select_worker(workers, req("the same hot prompt")).worker.in_flight_requests += 1
    assert max(w.in_flight_requests for w in workers) <= -(-1.25 * 400 // 4)
    assert min(w.in_flight_requests for w in workers) > 0


def test_hash_accepts_lone_surrogates_and_refuses_a_factor_below_one() -> None:
    policy = hashing()
    workers = make_workers(2)
    assert policy.select_worker(workers, req("broken \ud800 text")).worker in workers
    with pytest.raises(ValueError, match="hash_load_factor"):
        hashing(hash_load_factor=0.9)


# --- session affinity ----------------------------------------------------------------------


def session_policy(**overrides) -> SessionPolicy:
    return SessionPolicy(PolicyConfig(**overrides), random.Random(0))


def test_session_sticks_to_its_worker_even_when_it_gets_busier() -> None:
    policy = session_policy()
    workers = make_workers(3)
    first = policy.select_worker(workers, req(session="alice"))
    assert first.reason == "session_new"
    first.worker.in_flight_requests = 50
    again = policy.select_worker(workers, req(session="alice"))
    assert (again.worker, again.reason) == (first.worker, "session_hit")


def test_new_sessions_spread_over_idle_workers() -> None:
    policy = session_policy()
    workers = make_workers(3)
    homes = [policy.select_worker(workers, req(session=f"s{i}")).worker for i in range(6)]
    assert Counter(homes) == {w: 2 for w in workers}


def test_new_sessions_and_keyless_requests_go_to_the_least_loaded() -> None:
    policy = session_policy()
    workers = make_workers(3, loads=[5, 1, 3])
    assert policy.select_worker(workers, req(session="bob")).worker is workers[1]
    keyless = policy.select_worker(workers, req())
    assert (keyless.worker, keyless.reason) == (workers[1], "no_session")
    assert policy.home_of("bob") == workers[1].worker_id


def test_session_rehomes_when_its_worker_leaves_or_is_not_a_candidate() -> None:
    policy = session_policy()
    workers = make_workers(3)
    home = policy.select_worker(workers, req(session="carol")).worker
    # Not a candidate (unhealthy, say): moves, and sticks to the new worker.
    rest = [w for w in workers if w is not home]
    moved = policy.select_worker(rest, req(session="carol"))
    assert moved.reason == "session_new" and moved.worker in rest
    back = policy.select_worker(workers, req(session="carol"))
    assert (back.worker, back.reason) == (moved.worker, "session_hit")
    # Removed: forgotten, so the next request is a new session.
    policy.on_worker_removed(moved.worker)
    assert policy.home_of("carol") is None
    remaining = [w for w in workers if w is not moved.worker]
    assert policy.select_worker(remaining, req(session="carol")).reason == "session_new"


def test_session_map_is_bounded_least_recently_used_first() -> None:
    policy = session_policy(max_sessions=2)
    workers = make_workers(2)
    policy.select_worker(workers, req(session="s1"))
    policy.select_worker(workers, req(session="s2"))
    policy.select_worker(workers, req(session="s1"))  # s1 used again: s2 is now oldest
    policy.select_worker(workers, req(session="s3"))
    assert policy.home_of("s2") is None
    assert policy.home_of("s1") is not None and policy.home_of("s3") is not None
    with pytest.raises(ValueError, match="max_sessions"):
        session_policy(max_sessions=0)
