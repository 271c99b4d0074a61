"""The placement planner: candidate filtering, Single/Pair plans, and every placement error."""

from __future__ import annotations

import random

import pytest

from router.config import PolicyConfig, RouterConfig
from router.errors import NoHealthyDecodeError, NoHealthyPrefillError, NoWorkersError, UnknownModelError
from router.placement.planner import Planner, known_models
from router.placement.types import Pair, RequestDescriptor, Single
from router.policies.cache_aware import CacheAwarePolicy
from router.policies.round_robin import RoundRobinPolicy
from router.policies.session import SessionPolicy
from router.workers.circuit_breaker import BreakerState, CircuitBreaker
from router.workers.worker import Role, Worker, WorkerState


def rr_planner() -> Planner:
    return Planner(RoundRobinPolicy(), RoundRobinPolicy(), RoundRobinPolicy())


def worker(port: int, role: Role = Role.REGULAR, models: tuple[str, ...] = ("m",), **kw) -> Worker:
    return Worker(f"http://127.0.0.1:{port}", role=role, models=frozenset(models), **kw)


def req(model: str | None = "m", text: str = "hi", excluded: set[str] | None = None) -> RequestDescriptor:
    return RequestDescriptor("r1", model, text, excluded=excluded or set())


def open_breaker(opened_at: float, timeout: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker(timeout_secs=timeout, state=BreakerState.OPEN, opened_at=opened_at)


def test_regular_request_gets_a_single_from_the_regular_pool_only() -> None:
    regular = worker(1)
    fleet = [worker(2, Role.PREFILL), regular, worker(3, Role.DECODE)]
    plan = rr_planner().plan(req(), fleet, pd=False, now=0.0)
    assert plan == Single(regular, "round_robin")


def test_pd_request_gets_a_pair_with_both_reasons() -> None:
    prefill, decode = worker(1, Role.PREFILL), worker(2, Role.DECODE)
    planner = Planner(RoundRobinPolicy(), CacheAwarePolicy(PolicyConfig()), RoundRobinPolicy())
    plan = planner.plan(req(), [worker(3), prefill, decode], pd=True, now=0.0)
    assert isinstance(plan, Pair) and plan.disagg is not None
    assert plan == Pair(prefill, decode, "smallest_tree", "round_robin", plan.disagg)
    assert (plan.disagg.decision, plan.disagg.reason) == ("pair", "backend_pairs")  # the default rule always pairs


def test_no_registered_workers_is_a_503_that_says_how_to_add_one() -> None:
    with pytest.raises(NoWorkersError) as e:
        rr_planner().plan(req(), [], pd=False, now=0.0)
    assert e.value.status == 503 and "POST /workers" in e.value.message


def test_unknown_model_is_a_404_listing_served_models() -> None:
    fleet = [worker(1, models=("llama",)), worker(2, models=("qwen",))]
    with pytest.raises(UnknownModelError) as e:
        rr_planner().plan(req("gpt-9"), fleet, pd=False, now=0.0)
    assert e.value.status == 404 and e.value.code == "model_not_found"
    assert "llama" in e.value.message and "qwen" in e.value.message


def test_a_worker_with_undiscovered_models_takes_any_model() -> None:
    undiscovered = worker(2, models=())
    plan = rr_planner().plan(req("gpt-9"), [worker(1, models=("llama",)), undiscovered], pd=False, now=0.0)
    assert plan == Single(undiscovered, "round_robin")


def test_a_known_model_on_a_failed_worker_is_unavailable_not_unknown() -> None:
    fleet = [worker(1, state=WorkerState.FAILED), worker(2, models=("other",))]
    with pytest.raises(NoWorkersError) as e:
        rr_planner().plan(req("m"), fleet, pd=False, now=0.0)
    assert e.value.status == 503 and "1 failed" in e.value.message


def test_model_filter_never_picks_a_worker_of_another_model() -> None:
    right = worker(2, models=("m",))
    fleet = [worker(1, models=("other",)), right, worker(3, models=("other",))]
    planner = rr_planner()
    assert {planner.plan(req("m"), fleet, pd=False, now=0.0).worker for _ in range(5)} == {right}
    # No model in the request: every worker qualifies.
    assert {planner.plan(req(None), fleet, pd=False, now=0.0).worker for _ in range(3)} == set(fleet)


def test_no_healthy_prefill() -> None:
    fleet = [worker(1, Role.PREFILL, state=WorkerState.NOT_READY), worker(2, Role.DECODE)]
    with pytest.raises(NoHealthyPrefillError) as e:
        rr_planner().plan(req(), fleet, pd=True, now=0.0)
    assert e.value.status == 503 and e.value.code == "no_healthy_prefill"
    assert "1 not_ready" in e.value.message and e.value.retry_after is None


def test_no_prefill_registered_at_all_is_no_healthy_prefill() -> None:
    with pytest.raises(NoHealthyPrefillError, match="no prefill worker is registered"):
        rr_planner().plan(req(), [worker(2, Role.DECODE)], pd=True, now=0.0)


def test_no_healthy_decode_reports_when_a_breaker_lets_requests_through_again() -> None:
    fleet = [
        worker(1, Role.PREFILL),
        worker(2, Role.DECODE, breaker=open_breaker(opened_at=100.0, timeout=30.0)),
        worker(3, Role.DECODE, breaker=open_breaker(opened_at=110.0, timeout=30.0)),
    ]
    prefill_policy = RoundRobinPolicy()
    planner = Planner(RoundRobinPolicy(), prefill_policy, RoundRobinPolicy())
    with pytest.raises(NoHealthyDecodeError) as e:
        planner.plan(req(), fleet, pd=True, now=120.0)
    assert e.value.code == "no_healthy_decode" and "2 circuit_open" in e.value.message
    assert e.value.retry_after == pytest.approx(10.0)
    # The failed plan did not advance the prefill rotation.
    assert prefill_policy._counter == 0
    # Once the first breaker's timeout passes it lets a probe through (half-open).
    plan = planner.plan(req(), fleet, pd=True, now=130.0)
    assert isinstance(plan, Pair) and plan.decode is fleet[1]


def test_no_available_regular_worker_is_no_workers() -> None:
    with pytest.raises(NoWorkersError, match="no regular worker is registered"):
        rr_planner().plan(req(), [worker(1, Role.PREFILL), worker(2, Role.DECODE)], pd=False, now=0.0)
    with pytest.raises(NoWorkersError, match="1 draining"):
        rr_planner().plan(req(), [worker(1, state=WorkerState.DRAINING)], pd=False, now=0.0)


def test_excluded_workers_are_avoided_by_id_or_url() -> None:
    a, b = worker(1), worker(2)
    planner = rr_planner()
    for _ in range(3):
        assert planner.plan(req(excluded={a.worker_id}), [a, b], pd=False, now=0.0).worker is b
        assert planner.plan(req(excluded={b.url}), [a, b], pd=False, now=0.0).worker is a


def test_excluding_every_worker_falls_back_to_the_excluded_ones() -> None:
    a, b = worker(1), worker(2)
    chosen = {
        rr_planner().plan(req(excluded={a.worker_id, b.worker_id}), [a, b], pd=False, now=0.0).worker
        for _ in range(2)
    }
    assert chosen <= {a, b} and chosen


def test_from_config_builds_one_policy_per_pool_with_overrides() -> None:
    config = RouterConfig(policy="round_robin", prefill_policy="cache_aware", decode_policy="session")
    planner = Planner.from_config(config, random.Random(0))
    assert isinstance(planner.policy(Role.REGULAR), RoundRobinPolicy)
    assert isinstance(planner.policy(Role.PREFILL), CacheAwarePolicy)
    assert isinstance(planner.policy(Role.DECODE), SessionPolicy)


def test_removal_and_eviction_reach_the_pool_policies() -> None:
    prefill_policy = CacheAwarePolicy(PolicyConfig())
    planner = Planner(RoundRobinPolicy(), prefill_policy, RoundRobinPolicy())
    prefill = worker(1, Role.PREFILL)
    planner.plan(req(text="a long shared prompt"), [prefill, worker(2, Role.DECODE)], pd=True, now=0.0)
    assert prefill_policy.tree.tenant_size(prefill.worker_id) > 0
    assert planner.evict(now=60.0) == 0
    planner.on_worker_removed(prefill)
    assert prefill_policy.tree.tenant_size(prefill.worker_id) == 0


def test_known_models_unions_discovered_models() -> None:
    fleet = [worker(1, models=("a", "b")), worker(2, models=("b", "c")), worker(3, models=())]
    assert known_models(fleet) == {"a", "b", "c"}


def test_a_pair_never_mixes_transports() -> None:
    """A gRPC decode worker gets a gRPC prefill worker, whatever the prefill policy's turn."""
    http_prefill = worker(1, Role.PREFILL)
    grpc_prefill = Worker("grpc://127.0.0.1:2", role=Role.PREFILL, models=frozenset({"m"}))
    grpc_decode = Worker("grpc://127.0.0.1:3", role=Role.DECODE, models=frozenset({"m"}))
    planner = rr_planner()
    plans = [planner.plan(req(), [http_prefill, grpc_prefill, grpc_decode], pd=True, now=0.0) for _ in range(4)]
    assert all(isinstance(p, Pair) and p.prefill is grpc_prefill for p in plans)


def test_no_prefill_on_the_decode_workers_transport_says_to_use_one_scheme() -> None:
    grpc_decode = Worker("grpc://127.0.0.1:3", role=Role.DECODE, models=frozenset({"m"}))
    with pytest.raises(NoHealthyPrefillError, match="must both be http:// or both grpc://"):
        rr_planner().plan(req(), [worker(1, Role.PREFILL), grpc_decode], pd=True, now=0.0)
