"""Timing monotonicity and continuous batching over the prefix cache, driven step by step."""

from dataclasses import replace

import pytest

from engine_sim.config import EngineConfig
from engine_sim.scheduler import EngineCore, SimRequest
from engine_sim.timing import kv_transfer_seconds, step_seconds

CFG = EngineConfig(block_size=4, num_blocks=64, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=200)


def request(rid: str, prompt: list[int], out: int = 3, remote: bool = False) -> SimRequest:
    return SimRequest(rid, list(prompt), list(range(1000, 1000 + out)), remote_prefilled=remote)


def run_to_end(core: EngineCore) -> tuple[float, list]:
    """Run steps until idle; return total simulated time and all token events."""
    total, events = 0.0, []
    while (plan := core.schedule()) is not None:
        total += plan.duration
        events += core.complete(plan)
    return total, events


def test_step_time_grows_with_uncached_tokens_and_batch_size():
    times = [step_seconds(CFG, n, 0, 0) for n in (1, 10, 100, 1000)]
    assert times == sorted(times) and len(set(times)) == 4
    batch = [step_seconds(CFG, 0, b, 100 * b) for b in (1, 8, 64)]
    assert batch == sorted(batch) and len(set(batch)) == 3
    assert step_seconds(CFG, 0, 0, 0) == 0.0
    assert kv_transfer_seconds(CFG, 1000) > kv_transfer_seconds(CFG, 10)
    assert step_seconds(replace(CFG, time_scale=0.5), 100, 0, 0) == pytest.approx(step_seconds(CFG, 100, 0, 0) / 2)


def test_prefix_hit_makes_the_second_prefill_cheaper():
    core = EngineCore(CFG)
    prompt = list(range(40))
    core.add(request("a", prompt))
    cold, _ = run_to_end(core)
    core.add(request("b", prompt))
    plan = core.schedule()
    # 40 tokens: 9 full reusable blocks (the last token is always recomputed) = 36 cached.
    assert plan.prefill[0][1] == 4
    assert core.stats.cached_tokens == 36
    core.complete(plan)
    warm, _ = run_to_end(core)
    assert warm + plan.duration < cold


def test_every_request_gets_its_tokens_in_order():
    core = EngineCore(CFG)
    for i in range(6):  # more than max_num_seqs: two wait for a slot
        core.add(request(f"r{i}", [i] * 10, out=5))
    plan = core.schedule()
    assert len(core.running) == 4 and len(core.waiting) == 2
    core.complete(plan)
    _, events = run_to_end(core)
    by_req: dict[str, list[int]] = {}
    for e in events:
        by_req.setdefault(e.request_id, []).append(e.index)
    assert all(idx == list(range(5)) for rid, idx in by_req.items() if rid not in ("r0", "r1", "r2", "r3"))
    assert core.stats.finished_requests == 6 and not core.has_work
    assert core.cache.usage == 0.0


def test_decode_step_gets_slower_with_a_bigger_batch():
    def decode_step(batch: int) -> float:
        core = EngineCore(CFG)
        for i in range(batch):
            core.add(request(f"r{i}", [i] * 8, out=4))
        core.complete(core.schedule())  # the prefill step
        return core.schedule().duration

    assert decode_step(1) < decode_step(2) < decode_step(4)


def test_kv_capacity_queues_requests_until_blocks_free():
    cfg = replace(CFG, num_blocks=6)
    core = EngineCore(cfg)
    core.add(request("a", list(range(12)), out=4))  # 16 tokens = 4 blocks
    core.add(request("b", list(range(100, 112)), out=4))  # 4 more: does not fit beside a
    plan = core.schedule()
    assert [r.request_id for r in core.running] == ["a"] and len(core.waiting) == 1
    core.complete(plan)
    run_to_end(core)
    assert core.stats.finished_requests == 2


def test_too_long_requests_are_refused_with_a_reason():
    core = EngineCore(CFG)
    with pytest.raises(ValueError, match="maximum context length"):
        core.add(request("x", list(range(190)), out=20))
    with pytest.raises(ValueError, match="empty"):
        core.check(0, 1)


def test_abort_frees_blocks_and_skips_the_planned_step():
    core = EngineCore(CFG)
    core.add(request("a", list(range(20)), out=10))
    plan = core.schedule()
    assert core.cache.usage > 0
    assert core.abort("a")
    assert core.complete(plan) == []
    assert core.cache.usage == 0.0 and core.stats.aborted_requests == 1
    assert not core.abort("a")


def test_answer_blocks_are_cached_for_the_next_turn():
    core = EngineCore(CFG)
    first = request("t1", list(range(16)), out=9)
    core.add(first)
    run_to_end(core)
    # Turn two: the old prompt, the whole answer, then new user words.
    follow_up = list(range(16)) + first.output_ids + [7, 7, 7, 7]
    core.add(request("t2", follow_up))
    core.schedule()
    assert core.stats.cached_tokens == 24  # 16 prompt + the 8 answer tokens whose KV was written


def test_remote_prefilled_requests_skip_prefill_compute():
    core = EngineCore(CFG)
    core.add(request("d", list(range(40)), out=3, remote=True))
    plan = core.schedule()
    assert plan.prefill == [] and len(plan.decode) == 1
    _, events = run_to_end(core)
    assert [e.index for e in core.complete(plan) + events] == [0, 1, 2]
    assert core.stats.remote_prefill_tokens == 40 and core.stats.prompt_tokens == 0
