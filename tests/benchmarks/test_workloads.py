"""Trace generation: seeded, shaped like the workloads it names, and consistent with the simulator."""

from __future__ import annotations

import aiohttp

from benchmarks.workloads import (
    generated_shared_prefix,
    kv_pressure,
    mixed,
    multi_turn_chat,
    poisson_arrivals,
    poisson_until,
    request_kind,
)
from engine_sim.config import EngineConfig, WorkerSpec
from engine_sim.fleet import Fleet
from engine_sim.tokenizer import render_chat, tokenize


def test_traces_are_reproducible_and_seed_dependent():
    a = generated_shared_prefix(num_groups=3, prompts_per_group=4, seed=1)
    assert a == generated_shared_prefix(num_groups=3, prompts_per_group=4, seed=1)
    assert a != generated_shared_prefix(num_groups=3, prompts_per_group=4, seed=2)


def test_shared_prefix_groups_share_their_system_prompt():
    w = generated_shared_prefix(num_groups=3, prompts_per_group=5, system_prompt_len=100, question_len=10)
    assert len(w.requests) == 15
    by_group: dict[str, set[str]] = {}
    for r in w.requests:
        words = r.body["prompt"].split()
        assert len(words) == 110
        by_group.setdefault(r.group, set()).add(" ".join(words[:100]))
    assert len(by_group) == 3 and all(len(prefixes) == 1 for prefixes in by_group.values())
    arrivals = [r.arrival_s for r in w.requests]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0


def test_poisson_arrivals_have_the_requested_mean_rate():
    import random

    times = poisson_arrivals(4000, 10.0, random.Random(0))
    assert 9.5 < len(times) / times[-1] < 10.5


def test_kv_pressure_prefixes_fill_seventy_percent_of_the_fleet():
    w = kv_pressure(fleet_kv_tokens=4 * 512 * 16, system_prompt_len=2048, prompts_per_group=2)
    groups = {r.group for r in w.requests}
    assert len(groups) * 2048 / (4 * 512 * 16) == 0.6875  # 11 groups: the closest to 70%
    assert "70%" in w.description


async def test_multi_turn_resends_the_exact_previous_answers():
    w = multi_turn_chat(num_sessions=2, turns=3, system_prompt_len=20, user_len=5, output_len=6)
    session = sorted((r for r in w.requests if r.group == "s0"), key=lambda r: r.arrival_s)
    assert [len(r.body["messages"]) for r in session] == [2, 4, 6]
    assert all(r.headers == {"x-session-id": "s0"} for r in session)
    fleet = Fleet([WorkerSpec()], EngineConfig(time_scale=0.1))
    await fleet.start()
    try:
        async with aiohttp.ClientSession() as http:
            for turn, follow_up in zip(session, session[1:], strict=False):
                async with http.post(fleet.workers[0].url + turn.path, json=turn.body) as resp:
                    answer = (await resp.json())["choices"][0]["message"]["content"]
                assert follow_up.body["messages"][len(turn.body["messages"])] == {"role": "assistant", "content": answer}
        # The later turns found the earlier conversation in the prefix cache.
        assert fleet.workers[0].snapshot()["cached_tokens"] > 0
    finally:
        await fleet.stop()


def _prompt_tokens(body: dict) -> int:
    return len(tokenize(render_chat(body["messages"]) if "messages" in body else body["prompt"]))


def test_poisson_until_stops_at_the_horizon():
    import random

    times = poisson_until(100.0, 5.0, random.Random(0))
    assert times == sorted(times) and times[-1] <= 100.0 and 450 < len(times) < 550
    assert poisson_until(10.0, 0.0, random.Random(0)) == []


def test_mixed_has_short_rag_and_session_requests_of_the_stated_sizes():
    w = mixed(rate=10.0, duration_s=40.0, seed=3)
    assert w == mixed(rate=10.0, duration_s=40.0, seed=3) and w != mixed(rate=10.0, duration_s=40.0, seed=4)
    by_kind: dict[str, list] = {}
    for r in w.requests:
        by_kind.setdefault(request_kind(r.group), []).append(r)
    assert set(by_kind) == {"short", "rag", "session"}
    assert all(_prompt_tokens(r.body) <= 60 for r in by_kind["short"])  # a few dozen tokens with chat markers
    rag = [r.body["prompt"].split() for r in by_kind["rag"]]
    assert all(len(words) == 64 + 2048 + 32 for words in rag)
    assert len({" ".join(words[:64]) for words in rag}) == 1  # the shared instruction
    assert len({" ".join(words[64:]) for words in rag}) == len(rag)  # the retrieved text is new every time
    # Shares of all arrivals, within Poisson noise (sessions start early enough to finish: a little fewer).
    n = len(w.requests)
    assert 0.4 < len(by_kind["short"]) / n < 0.6 and 0.13 < len(by_kind["rag"]) / n < 0.27
    assert 0.15 < len(by_kind["session"]) / n < 0.35
    arrivals = [r.arrival_s for r in w.requests]
    assert arrivals == sorted(arrivals) and arrivals[-1] <= 40.0


async def test_mixed_sessions_resend_their_history_which_the_worker_has_cached():
    w = mixed(rate=20.0, duration_s=8.0, session_turns=3, think_time_s=0.5, seed=1)
    first = next(r.group for r in w.requests if r.group.startswith("session-"))
    turns = [r for r in w.requests if r.group == first]
    assert len(turns) == 3 and all(t.headers == {"x-session-id": first} for t in turns)
    fleet = Fleet([WorkerSpec()], EngineConfig(time_scale=0.1))
    await fleet.start()
    try:
        async with aiohttp.ClientSession() as http:
            cached = []
            for turn in turns:
                async with http.post(fleet.workers[0].url + turn.path, json=turn.body) as resp:
                    cached.append((await resp.json())["usage"]["prompt_tokens_details"]["cached_tokens"])
        # Every later turn is all cached but for its newest user message (and a partial block).
        assert cached[0] == 0
        for turn, hit in zip(turns[1:], cached[1:], strict=True):
            assert _prompt_tokens(turn.body) - hit <= 48 + 2 + 16
    finally:
        await fleet.stop()
