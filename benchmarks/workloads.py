"""Benchmark traces: what is sent, when (Poisson arrivals), with fixed seeds (pure, no I/O).

- generated shared prefix: groups of prompts sharing a long system prompt, each with its
  own question, shuffled (like SGLang bench_serving's `generated-shared-prefix`);
- multi-turn chat: sessions whose every turn resends the whole conversation so far;
- KV pressure: shared prefixes sized to fill ~70% of the fleet's KV cache, so a router that
  scatters a group over every worker evicts what a cache-aware one keeps;
- mixed: short chats, long uncached RAG prompts and cached multi-turn sessions on one
  timeline, for conditional disaggregation (pair vs decode-only per request).

Token counts are simulator tokens (one per word, see `engine_sim.tokenizer`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from engine_sim.tokenizer import output_words, render_chat, tokenize


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    path: str  # "/v1/completions" or "/v1/chat/completions"
    body: dict[str, Any]
    group: str  # prefix group or chat session, for per-group analysis
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    requests: list[TraceRequest]

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0


def poisson_arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    """`n` arrival times of a Poisson process with `rate` requests per second."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0 requests/s, got {rate}")
    t, times = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def poisson_until(horizon_s: float, rate: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process with `rate` per second up to `horizon_s` (none at rate 0)."""
    if rate < 0:
        raise ValueError(f"arrival rate must be >= 0 requests/s, got {rate}")
    times: list[float] = []
    t = 0.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t > horizon_s:
            break
        times.append(t)
    return times


VOCABULARY_SIZE = 100_000


def vocabulary() -> list[str]:
    """Every word `random_text` can produce."""
    return [f"w{i}" for i in range(VOCABULARY_SIZE)]


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(f"w{rng.randrange(VOCABULARY_SIZE)}" for _ in range(n_words))


def generated_shared_prefix(
    *,
    num_groups: int = 8,
    prompts_per_group: int = 16,
    system_prompt_len: int = 1024,
    question_len: int = 64,
    output_len: int = 64,
    rate: float = 8.0,
    seed: int = 0,
    model: str = "sim-model",
    name: str = "shared-prefix",
) -> Workload:
    rng = random.Random(seed)
    systems = [random_text(rng, system_prompt_len) for _ in range(num_groups)]
    items = [(g, random_text(rng, question_len)) for g in range(num_groups) for _ in range(prompts_per_group)]
    rng.shuffle(items)
    arrivals = poisson_arrivals(len(items), rate, rng)
    requests = [
        TraceRequest(
            arrival_s=t,
            path="/v1/completions",
            body={"model": model, "prompt": f"{systems[g]} {q}", "max_tokens": output_len, "ignore_eos": True},
            group=f"g{g}",
        )
        for t, (g, q) in zip(arrivals, items, strict=True)
    ]
    desc = (
        f"{num_groups} groups x {prompts_per_group} prompts, system prompt {system_prompt_len} tokens, "
        f"question {question_len}, output {output_len}, Poisson {rate:g} req/s, seed {seed}"
    )
    return Workload(name, desc, requests)


def kv_pressure(
    *,
    fleet_kv_tokens: int,
    fill: float = 0.7,
    system_prompt_len: int = 1024,
    prompts_per_group: int = 12,
    question_len: int = 32,
    output_len: int = 32,
    rate: float = 8.0,
    seed: int = 0,
    model: str = "sim-model",
) -> Workload:
    """Shared prefixes whose total size is `fill` of the fleet's KV tokens."""
    num_groups = max(1, round(fill * fleet_kv_tokens / system_prompt_len))
    workload = generated_shared_prefix(
        num_groups=num_groups,
        prompts_per_group=prompts_per_group,
        system_prompt_len=system_prompt_len,
        question_len=question_len,
        output_len=output_len,
        rate=rate,
        seed=seed,
        model=model,
        name="kv-pressure",
    )
    desc = f"prefixes need {fill:.0%} of the fleet's {fleet_kv_tokens} KV tokens; " + workload.description
    return Workload(workload.name, desc, workload.requests)


def multi_turn_chat(
    *,
    num_sessions: int = 16,
    turns: int = 4,
    system_prompt_len: int = 256,
    user_len: int = 48,
    output_len: int = 48,
    session_rate: float = 2.0,
    think_time_s: float = 2.0,
    seed: int = 0,
    model: str = "sim-model",
) -> Workload:
    """Chat sessions starting as a Poisson process; turn k follows `k * think_time_s` later.

    Each turn carries the exact previous answers, computed with the simulator's
    deterministic output function, so this trace is meant for the simulated fleet.
    """
    rng = random.Random(seed)
    starts = poisson_arrivals(num_sessions, session_rate, rng)
    requests: list[TraceRequest] = []
    for s, start in enumerate(starts):
        messages: list[dict[str, str]] = [{"role": "system", "content": random_text(rng, system_prompt_len)}]
        for k in range(turns):
            messages.append({"role": "user", "content": random_text(rng, user_len)})
            requests.append(
                TraceRequest(
                    arrival_s=start + k * think_time_s,
                    path="/v1/chat/completions",
                    body={"model": model, "messages": list(messages), "max_tokens": output_len},
                    group=f"s{s}",
                    headers={"x-session-id": f"s{s}"},
                )
            )
            answer = " ".join(output_words(tokenize(render_chat(messages)), output_len))
            messages.append({"role": "assistant", "content": answer})
    requests.sort(key=lambda r: r.arrival_s)
    desc = (
        f"{num_sessions} sessions x {turns} turns, system {system_prompt_len} tokens, user {user_len}, "
        f"output {output_len}, sessions Poisson {session_rate:g}/s, think time {think_time_s:g}s, seed {seed}"
    )
    return Workload("multi-turn", desc, requests)


def mixed(
    *,
    rate: float = 8.0,
    duration_s: float = 20.0,
    short_share: float = 0.5,
    rag_share: float = 0.2,
    short_user_len: tuple[int, int] = (16, 48),
    short_output_len: int = 32,
    rag_instruction_len: int = 64,
    rag_document_len: int = 2048,
    rag_question_len: int = 32,
    rag_output_len: int = 64,
    session_turns: int = 4,
    session_system_len: int = 384,
    session_user_len: int = 48,
    session_output_len: int = 48,
    think_time_s: float = 2.0,
    seed: int = 0,
    model: str = "sim-model",
) -> Workload:
    """The traffic conditional disaggregation is for, three kinds of request on one timeline:

    - `short-*`: one-turn chats of a few dozen tokens (cheap to prefill anywhere: a KV transfer
      and a second hop cost more than they save);
    - `rag-*`: completions whose prompt is a shared instruction plus ~2,000 tokens of freshly
      retrieved text, uncached everywhere (a prefill worth moving off the decode workers);
    - `session-*`: multi-turn chats whose every turn resends the conversation, so all but the
      newest user message is cached where the previous turn ran.

    `rate` is the mean of all arrivals per second over `duration_s`; each kind arrives as its own
    Poisson process with its share of it (sessions: turns / s, each session `session_turns`
    turns `think_time_s` apart). Answers are the simulator's, so the trace is for a simulated fleet.
    """
    session_share = 1.0 - short_share - rag_share
    if not (0 <= short_share <= 1 and 0 <= rag_share <= 1 and session_share >= 0):
        raise ValueError(f"shares must be within [0, 1] and sum to at most 1, got short {short_share}, rag {rag_share}")
    rng = random.Random(seed)
    requests: list[TraceRequest] = []

    for i, t in enumerate(poisson_until(duration_s, rate * short_share, rng)):
        messages = [{"role": "user", "content": random_text(rng, rng.randint(*short_user_len))}]
        body = {"model": model, "messages": messages, "max_tokens": short_output_len}
        requests.append(TraceRequest(t, "/v1/chat/completions", body, f"short-{i}"))

    instruction = random_text(rng, rag_instruction_len)
    for i, t in enumerate(poisson_until(duration_s, rate * rag_share, rng)):
        prompt = f"{instruction} {random_text(rng, rag_document_len)} {random_text(rng, rag_question_len)}"
        body = {"model": model, "prompt": prompt, "max_tokens": rag_output_len, "ignore_eos": True}
        requests.append(TraceRequest(t, "/v1/completions", body, f"rag-{i}"))

    # Sessions start early enough for all their turns to fall inside the trace.
    session_horizon = max(0.0, duration_s - (session_turns - 1) * think_time_s)
    for s, start in enumerate(poisson_until(session_horizon, rate * session_share / session_turns, rng)):
        messages = [{"role": "system", "content": random_text(rng, session_system_len)}]
        for k in range(session_turns):
            messages.append({"role": "user", "content": random_text(rng, session_user_len)})
            body = {"model": model, "messages": list(messages), "max_tokens": session_output_len}
            headers = {"x-session-id": f"session-{s}"}
            requests.append(TraceRequest(start + k * think_time_s, "/v1/chat/completions", body, f"session-{s}", headers))
            answer = " ".join(output_words(tokenize(render_chat(messages)), session_output_len))
            messages.append({"role": "assistant", "content": answer})

    requests.sort(key=lambda r: r.arrival_s)
    desc = (
        f"{len(requests)} requests over {duration_s:g}s (Poisson, {rate:g} req/s in all, seed {seed}): "
        f"{short_share:.0%} short chats ({short_user_len[0]}-{short_user_len[1]} tokens, output {short_output_len}), "
        f"{rag_share:.0%} RAG prompts ({rag_instruction_len}-token shared instruction + {rag_document_len} uncached "
        f"+ {rag_question_len}, output {rag_output_len}), {session_share:.0%} session turns ({session_turns} turns, "
        f"system {session_system_len}, user {session_user_len}, output {session_output_len}, {think_time_s:g}s apart)"
    )
    return Workload("mixed", desc, requests)


def request_kind(group: str) -> str:
    """The kind of a `mixed` request from its group label (`short-3` -> `short`)."""
    return group.rsplit("-", 1)[0]
