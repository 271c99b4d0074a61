"""Continuous batching over the prefix cache: the pure core of one simulated engine.

The async driver (`engine_sim.engine`) alternates `schedule()` (what the next step does and
how long it takes) and `complete(plan)` (apply it, emit tokens) with a sleep in between;
no clock or I/O lives here, so tests drive steps by hand.

Policy, like vLLM's V1 scheduler with FCFS: running decodes first (one token each), then
unfinished prefill chunks, then new requests admitted in arrival order while the batch has
room (`max_num_seqs`), the step has token budget (`max_num_batched_tokens`) and the KV cache
has blocks. Blocks for the prompt *and* the whole output are reserved at admission, so a
running request is never preempted; a request that does not fit waits (head of line).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine_sim.config import EngineConfig
from engine_sim.kv_cache import Allocation, PrefixCache, block_hashes
from engine_sim.timing import step_seconds


@dataclass(eq=False)
class SimRequest:
    request_id: str
    prompt_ids: list[int]
    # The whole answer (its length is the number of tokens to generate).
    output_ids: list[int]
    # KV of the prompt arrives from a prefill worker: no local prefill compute.
    remote_prefilled: bool = False
    allocation: Allocation | None = None
    num_cached_tokens: int = 0
    num_computed: int = 0
    num_generated: int = 0
    prompt_hashes: list[int] = field(default_factory=list)
    # Blocks that held the prompt (a vLLM prefill answers them as remote_block_ids).
    prompt_block_ids: list[int] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def max_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def prefilled(self) -> bool:
        return self.num_computed >= self.prompt_len


@dataclass
class StepPlan:
    duration: float
    prefill: list[tuple[SimRequest, int]]
    decode: list[SimRequest]


@dataclass(frozen=True)
class TokenEvent:
    """Token `index` of a request's answer was produced; `finished` on its last one."""

    request_id: str
    index: int
    finished: bool


@dataclass
class CoreStats:
    prompt_tokens: int = 0  # prompt tokens of locally prefilled requests
    cached_tokens: int = 0  # of those, served from the prefix cache
    remote_prefill_tokens: int = 0  # prompt tokens whose KV came from a prefill worker
    generated_tokens: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0


class EngineCore:
    def __init__(self, cfg: EngineConfig, record_events: bool = False) -> None:
        self.cfg = cfg
        self.cache = PrefixCache(cfg.num_blocks, cfg.block_size, record_events)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.stats = CoreStats()
        self._by_id: dict[str, SimRequest] = {}

    # -- requests -------------------------------------------------------------
    def check(self, prompt_len: int, max_tokens: int) -> None:
        """Raise ValueError (an HTTP 400) for a request this engine can never serve."""
        if prompt_len < 1:
            raise ValueError("the prompt is empty; send at least one token")
        if prompt_len + max_tokens > self.cfg.max_model_len:
            raise ValueError(
                f"this model's maximum context length is {self.cfg.max_model_len} tokens, but the request "
                f"needs {prompt_len} prompt + {max_tokens} output tokens; shorten the prompt or lower max_tokens"
            )
        if self._blocks_needed(prompt_len + max_tokens) > self.cfg.num_blocks:
            raise ValueError(
                f"the request needs {prompt_len + max_tokens} tokens of KV but the cache holds "
                f"{self.cfg.num_blocks * self.cfg.block_size}; lower max_tokens or the prompt"
            )

    def add(self, request: SimRequest) -> None:
        self.check(request.prompt_len, request.max_tokens)
        if request.request_id in self._by_id:
            raise ValueError(f"request id {request.request_id} is already running")
        request.prompt_hashes = block_hashes(request.prompt_ids, self.cfg.block_size)
        self._by_id[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is and free its blocks; False if it is not here."""
        request = self._by_id.pop(request_id, None)
        if request is None:
            return False
        if request in self.running:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        if request.allocation is not None:
            self.cache.free(request.allocation)
        self.stats.aborted_requests += 1
        return True

    def cached_prefix_tokens(self, prompt_ids: list[int]) -> int:
        """Tokens of `prompt_ids` a new request would find cached now (for transfer sizing)."""
        hashes = block_hashes(prompt_ids, self.cfg.block_size)
        return self.cache.match(self._reusable(hashes, len(prompt_ids))) * self.cfg.block_size

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- steps ----------------------------------------------------------------
    def schedule(self) -> StepPlan | None:
        """Plan the next step, admitting waiting requests; None when there is nothing to do."""
        budget = self.cfg.max_num_batched_tokens
        decode = [r for r in self.running if r.prefilled]
        budget -= len(decode)
        prefill: list[tuple[SimRequest, int]] = []
        for request in self.running:
            if not request.prefilled and budget > 0:
                chunk = min(request.prompt_len - request.num_computed, budget)
                prefill.append((request, chunk))
                budget -= chunk
        while self.waiting and len(self.running) < self.cfg.max_num_seqs and budget > 0:
            request = self.waiting[0]
            if not self._admit(request):
                break
            self.waiting.popleft()
            self.running.append(request)
            if request.prefilled:  # KV came from a prefill worker: decode right away
                decode.append(request)
                budget -= 1
                continue
            chunk = min(request.prompt_len - request.num_computed, budget)
            prefill.append((request, chunk))
            budget -= chunk
        if not prefill and not decode:
            return None
        context = sum(r.prompt_len + r.num_generated for r in decode)
        duration = step_seconds(self.cfg, sum(c for _, c in prefill), len(decode), context)
        return StepPlan(duration=duration, prefill=prefill, decode=decode)

    def complete(self, plan: StepPlan) -> list[TokenEvent]:
        """Apply a planned step; requests aborted meanwhile are skipped."""
        events: list[TokenEvent] = []
        for request, chunk in plan.prefill:
            if request.request_id not in self._by_id:
                continue
            request.num_computed += chunk
            if request.prefilled:
                assert request.allocation is not None
                self.cache.commit(request.allocation, request.prompt_hashes, request.prompt_ids)
                events.append(self._emit(request))
        for request in plan.decode:
            if request.request_id in self._by_id:
                events.append(self._emit(request))
        return events

    # -- internals ------------------------------------------------------------
    def _blocks_needed(self, tokens: int) -> int:
        return -(-tokens // self.cfg.block_size)

    def _reusable(self, hashes: list[int], prompt_len: int) -> list[int]:
        # The last prompt token is always computed (its logits give the first output token).
        return hashes[: (prompt_len - 1) // self.cfg.block_size]

    def _admit(self, request: SimRequest) -> bool:
        total = self._blocks_needed(request.prompt_len + request.max_tokens)
        allocation = self.cache.allocate(self._reusable(request.prompt_hashes, request.prompt_len), total)
        if allocation is None:
            return False
        request.allocation = allocation
        request.prompt_block_ids = allocation.block_ids[: self._blocks_needed(request.prompt_len)]
        request.num_cached_tokens = allocation.num_cached_blocks * self.cfg.block_size
        if request.remote_prefilled:
            request.num_computed = request.prompt_len
            self.cache.commit(allocation, request.prompt_hashes, request.prompt_ids)
            self.stats.remote_prefill_tokens += request.prompt_len
        else:
            request.num_computed = request.num_cached_tokens
            self.stats.prompt_tokens += request.prompt_len
            self.stats.cached_tokens += request.num_cached_tokens
        return True

    def _emit(self, request: SimRequest) -> TokenEvent:
        index = request.num_generated
        request.num_generated += 1
        self.stats.generated_tokens += 1
        finished = request.num_generated >= request.max_tokens
        if finished:
            self._finish(request)
        return TokenEvent(request.request_id, index, finished)

    def _finish(self, request: SimRequest) -> None:
        """Cache the full blocks of prompt + answer (multi-turn reuse), then free them."""
        assert request.allocation is not None
        # The last token's KV is never written: it was sampled, not fed back.
        context = request.prompt_ids + request.output_ids[: request.num_generated - 1]
        self.cache.commit(request.allocation, block_hashes(context, self.cfg.block_size), context)
        self.cache.free(request.allocation)
        self.running.remove(request)
        del self._by_id[request.request_id]
        self.stats.finished_requests += 1
