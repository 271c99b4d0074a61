"""Conditional disaggregation: the pure rule, the planner around it, and each backend's capability."""

from __future__ import annotations

import random

import pytest

from router.adapters import ADAPTERS
from router.cli import UsageError, build_parser, config_from_args
from router.config import DisaggConfig, PolicyConfig, RouterConfig
from router.errors import NoHealthyPrefillError
from router.placement.disagg_decider import DisaggRule
from router.placement.planner import Planner
from router.placement.types import (
    CHARS_PER_TOKEN,
    DECODE_ONLY,
    PAIR,
    Pair,
    RequestDescriptor,
    Single,
)
from router.policies.cache_aware import CacheAwarePolicy
from router.policies.kv_aware import KVAwarePolicy
from router.policies.kv_block_index import KVBlockIndex
from router.policies.round_robin import RoundRobinPolicy
from router.workers.worker import Role, Worker, WorkerState

CONDITIONAL = DisaggRule(DisaggConfig(), decode_only_capable=True)


def decide(rule: DisaggRule = CONDITIONAL, *, prompt: int, cached: int = 0, prefill_in_flight=(0,), failed=None):
    d = rule.decide(prompt_tokens=prompt, cached_tokens=cached, prefill_in_flight=list(prefill_in_flight), failed_decision=failed)
    return d.decision, d.reason


# -- the rule ------------------------------------------------------------------------------


def test_defaults_send_a_few_dozen_tokens_decode_only_and_2000_uncached_as_a_pair() -> None:
    assert decide(prompt=40) == (DECODE_ONLY, "short_prompt")
    assert decide(prompt=2000) == (PAIR, "uncached_prompt")


def test_the_threshold_is_on_uncached_tokens_inclusive() -> None:
    n = DisaggConfig().min_uncached_tokens
    assert decide(prompt=n - 1) == (DECODE_ONLY, "short_prompt")
    assert decide(prompt=n) == (PAIR, "uncached_prompt")
    # A long prompt whose prefix decode caches: only the uncached rest counts.
    assert decide(prompt=2000, cached=2000 - n + 1) == (DECODE_ONLY, "cached_prefix")
    assert decide(prompt=2000, cached=2000 - n) == (PAIR, "uncached_prompt")


def test_the_decision_reports_prompt_cached_and_uncached_tokens_with_cached_clamped() -> None:
    d = CONDITIONAL.decide(prompt_tokens=300, cached_tokens=128, prefill_in_flight=[0])
    assert (d.prompt_tokens, d.cached_tokens, d.uncached_tokens) == (300, 128, 172)
    over = CONDITIONAL.decide(prompt_tokens=100, cached_tokens=512, prefill_in_flight=[0])
    assert (over.cached_tokens, over.uncached_tokens) == (100, 0)


def test_busy_prefill_pool_prefers_decode_only_only_when_every_candidate_is_at_the_limit() -> None:
    limit = DisaggConfig().max_prefill_queue
    assert decide(prompt=2000, prefill_in_flight=(limit, limit)) == (DECODE_ONLY, "prefill_busy")
    assert decide(prompt=2000, prefill_in_flight=(limit, limit - 1)) == (PAIR, "uncached_prompt")
    unlimited = DisaggRule(DisaggConfig(max_prefill_queue=0), decode_only_capable=True)
    assert decide(unlimited, prompt=2000, prefill_in_flight=(1000,)) == (PAIR, "uncached_prompt")


def test_no_prefill_candidate_means_decode_only_even_for_a_long_prompt() -> None:
    assert decide(prompt=5000, prefill_in_flight=()) == (DECODE_ONLY, "no_prefill")


def test_a_retry_tries_the_other_kind() -> None:
    assert decide(prompt=10, failed=DECODE_ONLY) == (PAIR, "retry_as_pair")
    assert decide(prompt=5000, failed=PAIR) == (DECODE_ONLY, "retry_decode_only")
    # ... but never a pair without a prefill worker to pair with.
    assert decide(prompt=10, failed=DECODE_ONLY, prefill_in_flight=()) == (DECODE_ONLY, "no_prefill")


def test_always_pair_and_incapable_backends_pair_whatever_the_request() -> None:
    always = DisaggRule(DisaggConfig(always_pair=True), decode_only_capable=True)
    incapable = DisaggRule(DisaggConfig(), decode_only_capable=False)
    for prompt, cached, in_flight, failed in [(1, 0, (0,), None), (5000, 5000, (99,), PAIR), (10, 0, (), None)]:
        kwargs = {"prompt": prompt, "cached": cached, "prefill_in_flight": in_flight, "failed": failed}
        assert decide(always, **kwargs) == (PAIR, "always_pair")
        assert decide(incapable, **kwargs) == (PAIR, "backend_pairs")
    assert not always.may_skip_prefill and not incapable.may_skip_prefill and CONDITIONAL.may_skip_prefill


# -- per-backend capability --------------------------------------------------------------------


def test_only_vllm_backends_may_run_decode_only() -> None:
    capable = {name for name, adapter in ADAPTERS.items() if adapter.runs_decode_only}
    assert capable == {"vllm", "vllm-mooncake"}


@pytest.mark.parametrize("backend", ["sglang", "atom"])
def test_sglang_and_atom_pools_never_plan_decode_only(backend: str) -> None:
    config = RouterConfig(backend=backend, pd_disaggregation=True, policy="round_robin")
    planner = Planner.from_config(config, random.Random(0), decode_only_capable=ADAPTERS[backend].runs_decode_only)
    prefill, decode = worker(1, Role.PREFILL), worker(2, Role.DECODE)
    for text in ("hi", "x" * 40_000):
        plan = planner.plan(req(text), [prefill, decode], pd=True, now=0.0)
        assert isinstance(plan, Pair) and plan.disagg is not None and plan.disagg.reason == "backend_pairs"
    # With no prefill worker the request fails as before: decode cannot serve it alone.
    with pytest.raises(NoHealthyPrefillError):
        planner.plan(req("hi"), [decode], pd=True, now=0.0)


# -- the planner ---------------------------------------------------------------------------------


def worker(port: int, role: Role, **kw) -> Worker:
    return Worker(f"http://127.0.0.1:{port}", role=role, models=frozenset({"m"}), **kw)


def req(text: str, tokens: list[int] | None = None, **kw) -> RequestDescriptor:
    prompt_tokens = len(tokens) if tokens is not None else len(text) // CHARS_PER_TOKEN + 1
    return RequestDescriptor("r1", "m", text, routing_tokens=tokens, prompt_tokens=prompt_tokens, **kw)


def conditional_planner(decode_policy, prefill_policy=None) -> Planner:
    return Planner(RoundRobinPolicy(), prefill_policy or RoundRobinPolicy(), decode_policy, CONDITIONAL)


def test_decode_only_plan_is_a_single_on_the_decode_worker_and_leaves_the_prefill_policy_alone() -> None:
    prefill_policy = CacheAwarePolicy(PolicyConfig())
    planner = conditional_planner(RoundRobinPolicy(), prefill_policy)
    prefill, decode = worker(1, Role.PREFILL), worker(2, Role.DECODE)
    plan = planner.plan(req("short"), [prefill, decode], pd=True, now=0.0)
    assert isinstance(plan, Single) and plan.worker is decode and plan.reason == "round_robin"
    assert plan.disagg is not None and (plan.disagg.decision, plan.disagg.reason) == (DECODE_ONLY, "short_prompt")
    assert prefill_policy.tree.tenant_size(prefill.worker_id) == 0  # the prefill policy never ran

    plan = planner.plan(req("y" * 4000), [prefill, decode], pd=True, now=0.0)
    assert isinstance(plan, Pair) and (plan.prefill, plan.decode) == (prefill, decode)
    assert plan.disagg is not None and plan.disagg.reason == "uncached_prompt"


def test_cache_aware_decode_pool_sends_a_repeated_long_prompt_decode_only() -> None:
    """Text keys: the tree's matched characters count as tokens the same way the prompt does."""
    planner = conditional_planner(CacheAwarePolicy(PolicyConfig()))
    fleet = [worker(1, Role.PREFILL), worker(2, Role.DECODE)]
    prompt = "a long shared system prompt. " * 100  # ~725 estimated tokens
    first = planner.plan(req(prompt), fleet, pd=True, now=0.0)
    assert isinstance(first, Pair) and first.disagg is not None and first.disagg.cached_tokens == 0
    again = planner.plan(req(prompt + " and a new question?"), fleet, pd=True, now=0.0)
    assert isinstance(again, Single) and again.disagg is not None
    assert again.disagg.reason == "cached_prefix" and again.disagg.cached_tokens == len(prompt) // CHARS_PER_TOKEN


def test_cache_aware_reports_the_chosen_workers_own_match_with_token_keys() -> None:
    policy = CacheAwarePolicy(PolicyConfig(cache_threshold=0.9))
    d1, d2 = worker(1, Role.DECODE), worker(2, Role.DECODE)
    policy.tree.insert(tuple(range(100)), d1.worker_id)
    policy.tree.insert(tuple(range(10)), d2.worker_id)
    hit = policy.select_worker([d1, d2], req("", tokens=list(range(105))))
    assert (hit.worker, hit.reason, hit.cached_tokens) == (d1, "cache_hit", 100)  # before the insert
    # 105 of 400 tokens held: below the 0.9 threshold, so the smallest tree (d2) wins, and
    # the estimate is what d2 holds, not d1's longer match.
    chosen = policy.select_worker([d1, d2], req("", tokens=list(range(400))))
    assert (chosen.worker, chosen.reason, chosen.cached_tokens) == (d2, "smallest_tree", 10)


def test_kv_aware_decode_pool_counts_the_engines_cached_blocks() -> None:
    index = KVBlockIndex()
    decode = worker(2, Role.DECODE)
    planner = conditional_planner(KVAwarePolicy(PolicyConfig(), index, random.Random(0)))
    fleet = [worker(1, Role.PREFILL), decode]
    prompt = list(range(3, 603))  # 600 tokens: 4 full blocks of 128
    assert isinstance(planner.plan(req("", tokens=prompt), fleet, pd=True, now=0.0), Pair)
    # Decode's engine reports the 4 blocks (after the pair, it holds the transferred KV).
    index.stored(decode.worker_id, [1, 2, 3, 4], None, prompt[:512], 128)
    plan = planner.plan(req("", tokens=prompt + [7] * 10), fleet, pd=True, now=0.0)
    assert isinstance(plan, Single) and plan.disagg is not None
    assert (plan.disagg.reason, plan.disagg.cached_tokens, plan.disagg.uncached_tokens) == ("cached_prefix", 512, 98)


def test_policies_that_model_no_cache_report_nothing_cached() -> None:
    planner = conditional_planner(RoundRobinPolicy())
    fleet = [worker(1, Role.PREFILL), worker(2, Role.DECODE)]
    for _ in range(2):
        plan = planner.plan(req("z" * 4000), fleet, pd=True, now=0.0)
        assert isinstance(plan, Pair) and plan.disagg is not None and plan.disagg.cached_tokens == 0


def test_no_ready_prefill_serves_decode_only_where_the_backend_can() -> None:
    decode = worker(2, Role.DECODE)
    fleet = [worker(1, Role.PREFILL, state=WorkerState.FAILED), decode]
    plan = conditional_planner(RoundRobinPolicy()).plan(req("q" * 8000), fleet, pd=True, now=0.0)
    assert isinstance(plan, Single) and plan.worker is decode
    assert plan.disagg is not None and plan.disagg.reason == "no_prefill"


def test_prefill_queue_is_read_from_the_candidates_in_flight_counts() -> None:
    prefill, decode = worker(1, Role.PREFILL), worker(2, Role.DECODE)
    prefill.in_flight_requests = DisaggConfig().max_prefill_queue
    plan = conditional_planner(RoundRobinPolicy()).plan(req("q" * 8000), [prefill, decode], pd=True, now=0.0)
    assert isinstance(plan, Single) and plan.disagg is not None and plan.disagg.reason == "prefill_busy"


def test_a_failed_decode_only_attempt_is_replanned_as_a_pair() -> None:
    planner = conditional_planner(RoundRobinPolicy())
    fleet = [worker(1, Role.PREFILL), worker(2, Role.DECODE)]
    plan = planner.plan(req("short", failed_decision=DECODE_ONLY), fleet, pd=True, now=0.0)
    assert isinstance(plan, Pair) and plan.disagg is not None and plan.disagg.reason == "retry_as_pair"


# -- flags ---------------------------------------------------------------------------------------


def test_flags_set_the_rule_and_default_to_config_defaults() -> None:
    base = ["--pd-disaggregation", "--backend", "vllm", "--prefill", "http://p:1", "--decode", "http://d:2"]
    assert config_from_args(build_parser().parse_args(base)).disagg == DisaggConfig()
    args = build_parser().parse_args(
        [*base, "--always-pair", "--disagg-min-uncached-tokens", "64", "--disagg-max-prefill-queue", "0"]
    )
    assert config_from_args(args).disagg == DisaggConfig(always_pair=True, min_uncached_tokens=64, max_prefill_queue=0)
    with pytest.raises(UsageError, match="--disagg-min-uncached-tokens must be 0 or more"):
        config_from_args(build_parser().parse_args([*base, "--disagg-min-uncached-tokens", "-1"]))
