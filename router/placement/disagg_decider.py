"""Conditional disaggregation: does this request need a prefill worker at all?

P/D is not free: the KV transfer and the second hop cost more than they save for a short
prompt, or for one whose prefix the decode worker already caches. The planner chooses the
decode worker first (that is where the cache lives), then asks `DisaggRule.decide`
whether pairing a prefill worker is worth it. The rule, first match wins:

1. the backend cannot serve a plain request on a decode worker -> pair (`backend_pairs`);
2. `--always-pair` -> pair (`always_pair`);
3. no prefill worker can take requests -> decode-only (`no_prefill`): better than a 503;
4. a retry after a failed attempt of one kind tries the other (`retry_as_pair`,
   `retry_decode_only`), within the dispatcher's retry budget;
5. decode lacks fewer than `--disagg-min-uncached-tokens` of the prompt's tokens ->
   decode-only (`short_prompt` when the whole prompt is that short, else `cached_prefix`);
6. every prefill candidate has `--disagg-max-prefill-queue` or more requests in flight ->
   decode-only (`prefill_busy`): prefilling locally beats queueing behind them;
7. otherwise -> pair (`uncached_prompt`).

Pure: no I/O, no clock; the planner passes in what placement already knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.config import DisaggConfig
from router.placement.types import DECODE_ONLY, PAIR, DisaggDecision


@dataclass(frozen=True)
class DisaggRule:
    """The decision rule of one router: its flags plus what its adapter can run."""

    config: DisaggConfig
    # The adapter serves a plain request on a decode worker (`Adapter.runs_decode_only`).
    decode_only_capable: bool = False

    @property
    def may_skip_prefill(self) -> bool:
        """Whether any request may go decode-only (so an empty prefill pool is no error)."""
        return self.decode_only_capable and not self.config.always_pair

    def decide(
        self,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        prefill_in_flight: Sequence[int],
        failed_decision: str | None = None,
    ) -> DisaggDecision:
        """Pair or decode-only for one request.

        `cached_tokens` is the chosen decode worker's cached prefix of the prompt (the
        decode policy's estimate); `prefill_in_flight` the in-flight requests of each
        prefill candidate (empty when none can take requests); `failed_decision` the kind
        of this request's last failed attempt, if any.
        """
        cached = min(max(cached_tokens, 0), prompt_tokens)

        def plan(decision: str, reason: str) -> DisaggDecision:
            return DisaggDecision(decision, reason, prompt_tokens, cached)

        if not self.decode_only_capable:
            return plan(PAIR, "backend_pairs")
        if self.config.always_pair:
            return plan(PAIR, "always_pair")
        if not prefill_in_flight:
            return plan(DECODE_ONLY, "no_prefill")
        if failed_decision == DECODE_ONLY:
            return plan(PAIR, "retry_as_pair")
        if failed_decision == PAIR:
            return plan(DECODE_ONLY, "retry_decode_only")
        if prompt_tokens - cached < self.config.min_uncached_tokens:
            return plan(DECODE_ONLY, "short_prompt" if prompt_tokens < self.config.min_uncached_tokens else "cached_prefix")
        limit = self.config.max_prefill_queue
        if limit > 0 and min(prefill_in_flight) >= limit:
            return plan(DECODE_ONLY, "prefill_busy")
        return plan(PAIR, "uncached_prompt")
